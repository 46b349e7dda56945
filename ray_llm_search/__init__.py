"""ray-llm-search: an LLM mentor and gradient descent tuning prompts together, as a Ray Tune searcher.

The searcher never imports torch or a model; the trainables (package ``trainables``) do the gradient work.
"""

from ray_llm_search.llm import LLM, CachedLLM, LLMError, LocalLLM, OpenAIChat, make_llm
from ray_llm_search.mentor import Mentor
from ray_llm_search.pool import Evaluation, PromptPool, Trajectory
from ray_llm_search.searcher import LLMSearch

__all__ = [
    "CachedLLM",
    "LLM",
    "LLMError",
    "LLMSearch",
    "LocalLLM",
    "Mentor",
    "OpenAIChat",
    "Evaluation",
    "PromptPool",
    "Trajectory",
    "make_llm",
]
__version__ = "0.1.0"
