"""ray-llm-search: an LLM mentor and gradient descent tuning prompts together, as a Ray Tune searcher.

The searcher never imports torch or a model; the trainables (package ``trainables``) do the gradient work.
The names below are imported when first used, so that ``ray_llm_search.contract`` and
``ray_llm_search.presets`` load without Ray (a trainable on a machine with torch alone imports the contract).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CachedLLM": "ray_llm_search.llm",
    "LLM": "ray_llm_search.llm",
    "LLMError": "ray_llm_search.llm",
    "LocalLLM": "ray_llm_search.llm",
    "OpenAIChat": "ray_llm_search.llm",
    "make_llm": "ray_llm_search.llm",
    "Mentor": "ray_llm_search.mentor",
    "Evaluation": "ray_llm_search.pool",
    "PromptPool": "ray_llm_search.pool",
    "Trajectory": "ray_llm_search.pool",
    "LLMSearch": "ray_llm_search.searcher",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ray_llm_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
