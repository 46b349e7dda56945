"""An answer cache for deliberate reruns: the same search asks the same questions, so replay the answers.

``CachedLLM(llm, path)`` wraps any mentor. An answer is keyed by the LLM's class, model, endpoint and
sampling settings, the meta-prompt, ``n`` and how many times this same question was asked before in this
process (so a rerun that asks a question twice gets both answers back, in order); never by an API key.
The file is JSON lines of ``{"key", "replies", "model", "n", "written"}``: no meta-prompt text, no key, no
endpoint credentials (a ``user:password@`` in a base URL is dropped from the key material too). A hit costs
no call and no token: it counts as ``usage["cache_hits"]`` (``usage["cache_misses"]`` for asks that went to
the LLM). ``enabled=False``, or ``RAY_LLM_SEARCH_NO_CACHE=1`` in the environment, bypasses the cache: every
question goes to the LLM and nothing is read or written.

This is not the crash journal (``llm_rounds.jsonl``), which replays a crashed driver's rounds on restore
whatever the settings; the cache is opt-in and shared across searches that point at the same file.

    >>> llm = CachedLLM(OpenAIChat("gpt-4o-mini"), "~/.cache/ray_llm_search/answers.jsonl")
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from urllib.parse import urlparse, urlunparse

from ray_llm_search.llm.base import LLM

NO_CACHE_ENV = "RAY_LLM_SEARCH_NO_CACHE"
# Attributes of an LLM that change its answers (whichever it has), besides the meta-prompt and n.
_SETTINGS = ("model", "model_name", "base_url", "temperature", "top_p", "max_tokens", "max_new_tokens", "seed",
             "style", "device")


class CachedLLM(LLM):
    """``llm`` with its answers cached in ``path`` (see the module docstring)."""

    def __init__(self, llm: LLM, path: str, enabled: bool = True) -> None:
        if not isinstance(llm, LLM):
            raise ValueError(f"CachedLLM wraps an LLM (ray_llm_search.llm.LLM), got {type(llm).__name__}")
        if not isinstance(path, str) or not path.strip():
            raise ValueError(f"path must be a file path for the cache, got {path!r}")
        super().__init__()
        self.llm = llm
        self.path = os.path.abspath(os.path.expanduser(path))
        self.enabled = bool(enabled)
        self.usage = llm.usage  # one account: the wrapped LLM's calls and tokens, plus hits and misses
        self.faults = llm.faults
        self._answers: dict | None = None
        self._asked: Counter = Counter()
        self._file_lock = threading.Lock()

    @property
    def style(self) -> str:  # the mentor builds its meta-prompt for the wrapped model
        return self.llm.style

    def __getattr__(self, name: str):
        # the wrapped LLM's settings (max_tokens, retries, ...), read by a dry run; never during unpickling
        if name in (*_SETTINGS, "retries") and "llm" in self.__dict__:
            return getattr(self.__dict__["llm"], name)
        raise AttributeError(name)

    @property
    def active(self) -> bool:
        return self.enabled and os.environ.get(NO_CACHE_ENV, "") in ("", "0")

    def key(self, meta_prompt: str, n: int, occurrence: int = 0) -> str:
        settings = {name: getattr(self.llm, name) for name in _SETTINGS if hasattr(self.llm, name)}
        if settings.get("base_url"):
            settings["base_url"] = _without_credentials(settings["base_url"])
        numerics = getattr(self.llm, "numerics", None)
        if callable(numerics):  # a local model's precision; float32's {} keeps the keys of caches written before
            settings.update(numerics())
        own = getattr(self.llm, "cache_settings", None)
        if callable(own):  # a client's own account of what changes its answers (a served model: not its port)
            settings.update(own())
        material = json.dumps({"class": type(self.llm).__name__, "settings": settings, "meta_prompt": meta_prompt,
                               "n": n, "occurrence": occurrence}, sort_keys=True, default=str)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        if not self.active:
            return self.llm.propose(meta_prompt, n)
        with self._file_lock:
            question = (meta_prompt, n)
            occurrence = self._asked[question]
            self._asked[question] += 1
            key = self.key(meta_prompt, n, occurrence)
            answer = self._load().get(key)
        if answer is not None:
            self._count(self.usage, cache_hits=1)
            return list(answer)
        replies = self.llm.propose(meta_prompt, n)  # an LLMError propagates; a failure is never cached
        self._count(self.usage, cache_misses=1)
        with self._file_lock:
            self._answers[key] = list(replies)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            line = {"key": key, "replies": list(replies), "model": str(getattr(self.llm, "model", None)
                                                                       or getattr(self.llm, "model_name", "")),
                    "n": n, "written": time.time()}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        return replies

    def _load(self) -> dict:
        if self._answers is None:
            self._answers = {}
            if os.path.isfile(self.path):
                with open(self.path, encoding="utf-8") as f:
                    for raw in f:
                        try:
                            entry = json.loads(raw)
                            self._answers[entry["key"]] = list(entry["replies"])
                        except (ValueError, KeyError, TypeError):
                            continue  # a line cut by a crash: that answer is asked again
        return self._answers

    def _transient(self) -> tuple[str, ...]:
        return ("_answers", "_file_lock")

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._file_lock = threading.Lock()
        self.usage, self.faults = self.llm.usage, self.llm.faults


def _without_credentials(url: str) -> str:
    parsed = urlparse(url)
    if parsed.username or parsed.password:
        host = parsed.hostname or ""
        netloc = host + (f":{parsed.port}" if parsed.port else "")
        parsed = parsed._replace(netloc=netloc)
    return urlunparse(parsed)
