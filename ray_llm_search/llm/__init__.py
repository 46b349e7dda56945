"""Mentor LLMs: one small interface, ``propose(meta_prompt, n) -> list[str]`` of raw replies."""

from ray_llm_search.llm.base import LLM, LLMError
from ray_llm_search.llm.local import LocalLLM, smollm2_gguf
from ray_llm_search.llm.openai_chat import OpenAIChat

__all__ = ["LLM", "LLMError", "LocalLLM", "OpenAIChat", "smollm2_gguf"]
