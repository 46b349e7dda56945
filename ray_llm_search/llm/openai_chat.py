"""Any OpenAI-compatible chat endpoint: OpenAI, vLLM, Ollama, llama.cpp's server, ..."""

from __future__ import annotations

import logging
import os
import random
import time
from urllib.parse import urlparse

from ray_llm_search.llm.base import LLM, LLMError

logger = logging.getLogger(__name__)


class OpenAIChat(LLM):
    """Chat-completions client with its own retries, so that every fault is counted by kind.

    Args:
        model: model name the endpoint serves (e.g. ``"gpt-4o-mini"``).
        base_url: ``None`` for OpenAI, else an ``http(s)://host[:port]/v1`` URL.
        api_key_env: name of the environment variable holding the key; ``None`` for servers that need
            none. The key is read when a client is made and is never stored in a config or the state.
        temperature, max_tokens, timeout_s: per request.
        retries: further attempts after a failed one; waits grow as ``backoff_s * 2**attempt``
            (with jitter, capped at ``max_backoff_s``), or follow the server's ``Retry-After``.
        style: ``"chat"`` (default) or ``"completion"`` meta-prompts.
        seed: sent with each request where not ``None`` (OpenAI's and llama.cpp's servers sample reproducibly
            with it); each request of a run gets ``seed + its number``, so that repeated rounds differ.

    Example:
        >>> llm = OpenAIChat("Qwen2.5-7B-Instruct", base_url="http://127.0.0.1:8000/v1", api_key_env=None)
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 1.0,
        max_tokens: int = 512,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        style: str = "chat",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not model or not isinstance(model, str):
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if base_url is not None:
            parsed = urlparse(base_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"base_url must look like 'http://host:port/v1' or 'https://...', got {base_url!r}"
                )
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ValueError(
                f"environment variable {api_key_env!r} (api_key_env) is not set; export the API key there, "
                "or pass api_key_env=None for a server that needs no key"
            )
        if not 0.0 <= temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        if not (max_tokens >= 1 and timeout_s > 0 and retries >= 0 and backoff_s >= 0 and max_backoff_s >= 0):
            raise ValueError(
                "need max_tokens >= 1, timeout_s > 0, retries >= 0, backoff_s >= 0, max_backoff_s >= 0; got "
                f"{max_tokens}, {timeout_s}, {retries}, {backoff_s}, {max_backoff_s}"
            )
        if style not in ("chat", "completion"):
            raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env  # the endpoint
        self.temperature, self.max_tokens, self.style = temperature, max_tokens, style  # what is asked
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self.seed = seed
        self._client = None

    def _transient(self) -> tuple[str, ...]:
        return ("_client",)

    def _get_client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env) if self.api_key_env else "none"
            if not key:
                raise LLMError("config", f"environment variable {self.api_key_env!r} is not set")
            self._client = openai.OpenAI(
                api_key=key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
            )
        return self._client

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        """One chat request (retried); returns ``[reply_text]``. Raises ``LLMError`` when all tries fail."""
        import openai

        client = self._get_client()
        last: LLMError | None = None
        for attempt in range(self.retries + 1):
            wait = None
            try:
                self._count(self.usage, calls=1)
                seed = None if self.seed is None else self.seed + self.usage["calls"] - 1
                response = client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": meta_prompt}],
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    **({} if seed is None else {"seed": seed}),
                )
                if isinstance(response, str) or not getattr(response, "choices", None):
                    raise LLMError("bad_response", f"reply has no choices: {str(response)[:200]!r}")
                usage = getattr(response, "usage", None)
                if usage is not None:
                    self._count(self.usage, prompt_tokens=usage.prompt_tokens or 0,
                                completion_tokens=usage.completion_tokens or 0)
                text = response.choices[0].message.content or ""
                if not text.strip():
                    self._count(self.faults, empty_reply=1)
                return [text]
            except openai.APITimeoutError as e:
                last = LLMError("timeout", str(e))
            except openai.RateLimitError as e:
                last = LLMError("rate_limit", str(e))
                wait = _retry_after(e.response)
            except openai.APIStatusError as e:
                kind = "server_error" if e.status_code >= 500 else f"http_{e.status_code}"
                last = LLMError(kind, str(e)[:300])
                if 400 <= e.status_code < 500 and e.status_code not in (408, 409):
                    self._count(self.faults, **{kind: 1})
                    raise last from e  # a bad request or key does not get better by retrying
            except openai.APIConnectionError as e:
                last = LLMError("connection", str(e))
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as e:
                last = LLMError("bad_response", str(e)[:300])
            except LLMError as e:
                last = e
            self._count(self.faults, **{last.kind: 1})
            if attempt < self.retries:
                if wait is None:
                    wait = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                wait = min(wait, self.max_backoff_s)
                logger.warning("LLM call failed (%s), retry %d/%d in %.1fs", last.kind, attempt + 1,
                               self.retries, wait)
                time.sleep(wait)
        raise last


def _retry_after(response) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return None if value is None else max(0.0, float(value))
    except (AttributeError, TypeError, ValueError):
        return None
