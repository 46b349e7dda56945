"""Mentor LLMs: one small interface, ``propose(meta_prompt, n) -> list[str]`` of raw replies."""

from ray_llm_search.llm.base import LLM, LLMError
from ray_llm_search.llm.cache import CachedLLM
from ray_llm_search.llm.local import LocalLLM, smollm2_gguf
from ray_llm_search.llm.openai_chat import OpenAIChat
from ray_llm_search.llm.server import LlamaCppChat, LlamaServer

__all__ = ["CachedLLM", "LLM", "LLMError", "LlamaCppChat", "LlamaServer", "LocalLLM", "OpenAIChat", "make_llm",
           "smollm2_gguf"]

LLM_KINDS = ("local", "openai", "llama-cpp")


def make_llm(kind: str, model: str | None = None, *, base_url: str | None = None,
             api_key_env: str | None = "OPENAI_API_KEY", seed: int = 0, load: bool = True, **local_options) -> LLM:
    """The mentor a script's ``--llm`` / model / ``--base-url`` / ``--api-key-env`` flags name.

    ``"openai"``: ``OpenAIChat(model or "gpt-4o-mini")`` at ``base_url``, the key read from ``api_key_env``
    (empty or ``None``: a server that needs no key). ``"local"``: ``LocalLLM(model, seed=seed,
    **local_options)``, loaded now unless ``load=False`` (the first load de-quantises the GGUF, about 40 s).
    ``"llama-cpp"``: ``LlamaCppChat(model or "qwen2.5-coder-1.5b", seed=seed, **local_options)``, a llama.cpp
    server on that GGUF file or named offline model, started now unless ``load=False`` and stopped at exit.
    """
    if kind == "openai":
        return OpenAIChat(model or "gpt-4o-mini", base_url=base_url, api_key_env=api_key_env or None)
    if kind == "llama-cpp":
        served = LlamaCppChat(model or "qwen2.5-coder-1.5b", seed=seed, **local_options)
        return served.load() if load else served
    if kind == "local":
        llm = LocalLLM(model, seed=seed, **local_options)
        if load:
            llm.load()
        return llm
    raise ValueError(f"LLM kind must be one of {LLM_KINDS}, got {kind!r}")
