"""The one small interface every mentor LLM implements."""

from __future__ import annotations

import threading
from collections import Counter


class LLMError(RuntimeError):
    """An LLM call that failed after its retries; ``kind`` names the last fault (e.g. ``"rate_limit"``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class LLM:
    """Base class: ``propose(meta_prompt, n)`` returns raw reply texts for the mentor to parse.

    ``style`` tells the mentor which meta-prompt suits the model: ``"chat"`` (a numbered list in one
    reply) or ``"completion"`` (one candidate per sampled continuation). ``usage`` counts calls and tokens,
    ``faults`` counts failures by kind (``timeout``, ``rate_limit``, ``server_error``, ``connection``,
    ``bad_response``, ...). Both are updated from the searcher's background thread, under a lock.

    Subclasses keep no secret on the instance and drop live clients and models when pickled: Tune pickles
    the search algorithm with the experiment.
    """

    style: str = "chat"

    def __init__(self) -> None:
        self.usage: Counter = Counter()
        self.faults: Counter = Counter()
        self._lock = threading.Lock()

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        raise NotImplementedError

    def _count(self, counter: Counter, **amounts: int) -> None:
        with self._lock:
            counter.update(amounts)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        for key in self._transient():
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        for key in self._transient():
            self.__dict__.setdefault(key, None)

    def _transient(self) -> tuple[str, ...]:
        """Attributes that are rebuilt lazily and never pickled (clients, loaded models)."""
        return ()
