"""ray-llm-search: an LLM mentor and gradient descent tuning prompts together, as a Ray Tune searcher.

The public surface: ``LLMSearch`` (the searcher), ``SearchConfig`` (its settings), ``presets`` (the named
designs), the LLM clients (``LLM``, ``LLMError``, ``OpenAIChat``, ``LocalLLM``, ``LlamaCppChat``, ``make_llm``) and
their cache (``CachedLLM``). Internals stay in their modules (``ray_llm_search.mentor.Mentor``,
``ray_llm_search.pool.PromptPool``, ``Trajectory``, ``Evaluation``).

The searcher never imports torch or a model; the trainables (package ``trainables``) do the gradient work.
The names below are imported when first used, so that ``ray_llm_search.contract`` and
``ray_llm_search.presets`` load without Ray (a trainable on a machine with torch alone imports the contract).
"""

from __future__ import annotations

import importlib
import warnings

_EXPORTS = {
    "CachedLLM": "ray_llm_search.llm",
    "LLM": "ray_llm_search.llm",
    "LLMError": "ray_llm_search.llm",
    "LlamaCppChat": "ray_llm_search.llm",
    "LocalLLM": "ray_llm_search.llm",
    "OpenAIChat": "ray_llm_search.llm",
    "make_llm": "ray_llm_search.llm",
    "LLMSearch": "ray_llm_search.searcher",
    "SearchConfig": "ray_llm_search.config",
    "presets": None,  # the module
}
# Exported by 0.1.0 from the package root; importable from their modules (deprecated here for one release).
_MOVED = {
    "Mentor": "ray_llm_search.mentor",
    "Evaluation": "ray_llm_search.pool",
    "PromptPool": "ray_llm_search.pool",
    "Trajectory": "ray_llm_search.pool",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"ray_llm_search.{name} is internal: import it from {_MOVED[name]} (the package root stops "
                      "exporting it in the next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ray_llm_search' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = importlib.import_module(f"ray_llm_search.{name}") if module is None else getattr(
        importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
