"""The LLM round engine: one round at a time, asked in a background thread so that workers keep descending
while the LLM thinks, with a timeout, asks again (with back-off) after a reply with no usable prompt, and a
crash journal that a restored search replays instead of asking again.

``Round`` is what one round asked, got and kept (plain data: it is saved with the searcher's state);
``RoundEngine`` owns the thread and the journal: ``start(round)`` begins it, ``poll(round, parse)`` returns
``None`` while it runs, else its ``Outcome``. What the candidates are used for is the searcher's policy.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ray_llm_search.llm.base import LLMError
from ray_llm_search.mentor import Parsed

logger = logging.getLogger(__name__)

# Every LLM answer (or failure) as it arrives, so that a search restored after a driver crash replays the rounds
# the crashed driver had already paid for instead of asking again.
JOURNAL_FILE = "llm_rounds.jsonl"
_MAX_JOURNALED_CHARS = 20_000  # per reply
_MAX_KEPT_REPLY_CHARS = 4_000  # per reply, in the round's record
# First wait before asking again after a reply with no usable prompt; doubles per further ask, at most 30 s.
REASK_BACKOFF_S = 1.0
# The longest a searcher's ``suggest`` blocks for a round when no trial of its search runs (LLMSearch): Tune
# then has nothing else to do, and would otherwise ask again after a 1 s sleep and sleep 1 s more once a
# trial comes (about 2 s lost per round); a longer round returns None and is waited for at the next ask,
# after which Tune sleeps 1 s before starting the phase. So the wait grows with the rounds seen: twice the
# longest so far, at least IDLE_WAIT_S and at most IDLE_WAIT_MAX_S (a first Ctrl-C, which asks Tune to stop
# gracefully, is handled once the wait ends; a second one interrupts at once).
IDLE_WAIT_S = 5.0
IDLE_WAIT_MAX_S = 20.0


def idle_wait_s(previous_rounds_s: list[float | None]) -> float:
    """How long ``suggest`` may block for a round, given how long earlier rounds took (seconds; ``None`` or NaN
    for a round that was skipped or never timed)."""
    longest = max((float(s) for s in previous_rounds_s if isinstance(s, (int, float)) and s == s), default=0.0)
    return min(IDLE_WAIT_MAX_S, max(IDLE_WAIT_S, 2.0 * longest))


# What generations.jsonl keeps of a round (its "llm" entry).
RECORD_KEYS = ("status", "error", "started", "seconds", "asks", "meta_prompt", "replies", "candidates", "filled", "screened",
               "screen_filled", "rejected", "faults")


@dataclass
class Round:
    """One generation's LLM round. ``status``: ``"pending"`` while asked, then ``"done"``, ``"failed"`` or
    ``"budget"`` (the LLM budget was spent: no call), or ``"skipped"`` (the generation needed no candidate);
    ``"waiting"`` (``LLMSearch(overlap=True)``): not asked yet, until the round before it ends.
    ``direct``: candidates ready without an LLM (``proposals="perturb"``). ``lineages``: the chains its screened
    candidates go to (``overlap=True``)."""

    generation: int
    status: str = "pending"
    meta_prompt: str = ""
    n: int = 0  # candidates asked for
    new_starts: int = 0
    screen_slots: int = 0
    started: float = 0.0
    attempt: int = 0
    replies: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    faults_before: dict[str, int] = field(default_factory=dict)
    direct: list[str] | None = None
    replayed: int = 0
    lineages: list[str] = field(default_factory=list)
    # set when the round ends
    error: str | None = None
    seconds: float | None = None
    asks: int | None = None
    filled: list[str] = field(default_factory=list)
    screened: list[str] = field(default_factory=list)
    screen_filled: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)

    @classmethod
    def skipped(cls, generation: int) -> Round:
        return cls(generation, status="skipped")

    @classmethod
    def from_state(cls, value: Round | dict) -> Round:
        """A round from a saved state (older versions saved plain dicts with these keys)."""
        if isinstance(value, Round):
            return value
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})

    def record(self) -> dict[str, Any]:
        """What ``generations.jsonl`` keeps of the round."""
        if self.status == "skipped":
            return {"status": "skipped"}
        return {k: getattr(self, k) for k in RECORD_KEYS}


@dataclass
class Outcome:
    """How a round's asking ended: ``error`` is ``None``, ``"timeout"``, ``"budget"``, an ``LLMError`` kind or
    an exception's class name; ``faults`` are the LLM's fault counts during the round (``round_timeout``
    added)."""

    error: str | None
    elapsed: float
    faults: dict[str, int]


@dataclass
class Journal:
    """The crash journal of one searcher object (``incarnation``) of one search (``search_id``) in ``log_dir``;
    ``replay_from``: the incarnation whose answers a restored search replays (``None``: not restored)."""

    log_dir: str
    search_id: str
    incarnation: str
    replay_from: str | None = None

    def append(self, generation: int, attempt: int, **outcome: Any) -> None:
        append_journal(self.log_dir, {"search_id": self.search_id, "incarnation": self.incarnation,
                                      "generation": generation, "attempt": attempt, **outcome})

    def replayed(self, generation: int, attempt: int) -> dict | None:
        if not self.replay_from:
            return None
        return read_journal(self.log_dir, self.search_id, self.replay_from).get((generation, attempt))


class RoundEngine:
    """Asks ``llm`` for one round at a time in a background thread (see the module docstring).

    ``budget``: an ``LLMBudget`` or ``None``; once reached, a round fails at once without a call. ``on_event``:
    called (in a thread of its own) when an ask ends and when the round's timeout passes, so that a caller can
    ``poll`` without waiting for its own next event."""

    def __init__(self, llm, journal: Journal, timeout_s: float, reasks: int, budget=None,
                 on_event: Callable[[], None] | None = None) -> None:
        self.llm = llm
        self.journal = journal
        self.timeout_s = timeout_s
        self.reasks = reasks
        self.budget = budget
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._future: concurrent.futures.Future | None = None
        self._budget_warned = False
        self.on_event = on_event
        self._timers: list[threading.Timer] = []

    @property
    def running(self) -> bool:
        """Whether a round is being asked (``False`` in a searcher restored or unpickled mid-round)."""
        return self._future is not None

    def start(self, rnd: Round) -> None:
        rnd.faults_before = dict(getattr(self.llm, "faults", {}) or {})
        if rnd.direct is not None:  # no LLM: the candidates are ready at once
            self._future = _done([])
            self._watch(rnd)
            return
        self._ask(rnd)

    def poll(self, rnd: Round, parse: Callable[[list[str], int], Parsed]) -> Outcome | None:
        """``None`` while ``rnd`` is asked (or asked again); else its outcome, its replies, candidates and
        rejections added to ``rnd``. ``parse(replies, n)`` turns replies into candidates."""
        elapsed = time.time() - rnd.started
        if not self._future.done() and elapsed < self.timeout_s:
            return None
        replies, error = self._collect(rnd)
        if rnd.direct is not None:
            parsed = Parsed(candidates=list(rnd.direct))
        else:  # a failed ask has no reply to reject: its faults are counted by kind instead
            parsed = Parsed() if error else parse(replies, rnd.n)
        rnd.replies = rnd.replies + [r[:_MAX_KEPT_REPLY_CHARS] for r in replies]
        rnd.candidates = rnd.candidates + parsed.candidates
        rnd.rejected = dict(Counter(rnd.rejected or {}) + parsed.rejected)
        delay = min(30.0, REASK_BACKOFF_S * 2**rnd.attempt)
        if error is None and not rnd.candidates and rnd.attempt < self.reasks and elapsed + delay < self.timeout_s:
            rnd.attempt += 1
            logger.warning("LLM round %d: no usable prompt in its reply (rejected %s); asking again in %.1fs",
                           rnd.generation, dict(parsed.rejected), delay)
            self._ask(rnd, delay)
            return None
        faults = Counter(getattr(self.llm, "faults", {}) or {})
        faults.subtract(rnd.faults_before)
        rnd.faults_before = {}
        if error == "timeout":
            faults["round_timeout"] += 1
        return Outcome(error, elapsed, {k: v for k, v in faults.items() if v > 0})

    def wait(self, rnd: Round, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` (never past the round's own timeout) for the current ask to end; whether
        it has. For a searcher with nothing else to do: Tune, with no trial running, asks again only after a
        one-second sleep, and sleeps another second after a trial is found."""
        future = self._future
        if future is None or future.done():
            return future is not None
        left = min(float(timeout_s), self.timeout_s - (time.time() - rnd.started))
        if left > 0:
            concurrent.futures.wait([future], timeout=left)
        return future.done()

    def _watch(self, rnd: Round) -> None:
        """Call ``on_event`` when the current ask ends, and once the round's timeout has passed."""
        if self.on_event is None or self._future is None:
            return
        self._future.add_done_callback(lambda _: self._notify())
        left = self.timeout_s - (time.time() - rnd.started)
        timer = threading.Timer(max(0.0, left) + 0.05, self._notify)
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def _notify(self) -> None:
        # never in the thread that started the ask (it may hold the caller's lock mid-poll): a thread of its own
        threading.Thread(target=self._event, daemon=True, name="llm-search-event").start()

    def _event(self) -> None:
        try:
            if self.on_event is not None:
                self.on_event()
        except Exception:
            logger.exception("the LLM round's event handler raised")

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _collect(self, rnd: Round) -> tuple[list[str], str | None]:
        if not self._future.done():
            logger.warning("LLM round %d took over %gs; filling from the pool", rnd.generation, self.timeout_s)
            self._future = None  # the thread's late answer is ignored
            self.close()  # its one worker may hang on: the next round gets a fresh thread, not a queue behind it
            return [], "timeout"
        try:
            return self._future.result(), None
        except LLMError as e:
            logger.warning("LLM round %d failed (%s); filling from the pool", rnd.generation, e)
            return [], e.kind
        except Exception as e:  # any bug or fault in a user's LLM must not end the search
            logger.exception("LLM round %d raised; filling from the pool", rnd.generation)
            return [], type(e).__name__

    def _ask(self, rnd: Round, delay_s: float = 0.0) -> None:
        """Hand the round's current ask to the background thread, or, in a restored search, replay the answer
        that the crashed driver journaled, so that the LLM is not asked twice for the same round."""
        entry = self.journal.replayed(rnd.generation, rnd.attempt)
        if entry is not None:
            logger.info("LLM round %d (ask %d): replaying the answer journaled before the restore", rnd.generation,
                        rnd.attempt + 1)
            rnd.replayed += 1
            if entry.get("error"):
                self._future = _failed(LLMError(entry["error"], entry.get("message") or "journaled failure"))
            else:
                self._future = _done(list(entry.get("replies") or []))
            self._watch(rnd)
            return
        reached = self.budget.reached(getattr(self.llm, "usage", None)) if self.budget else None
        if reached is not None:  # no call: the round fails at once and is filled from the pool
            if not self._budget_warned:
                logger.warning("LLM budget reached (%s): generation %d and later fill from the pool", reached,
                               rnd.generation)
                self._budget_warned = True
            self._future = _failed(LLMError("budget", f"LLM budget reached: {reached}"))
            self._watch(rnd)
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-search")
        self._future = self._executor.submit(self._call, rnd.generation, rnd.attempt, rnd.meta_prompt, rnd.n,
                                             delay_s)
        self._watch(rnd)

    def _call(self, generation: int, attempt: int, meta_prompt: str, n: int, delay_s: float) -> list[str]:
        """Runs in the background thread: one ask, its outcome journaled before the searcher sees it."""
        if delay_s > 0:
            time.sleep(delay_s)
        try:
            result = self.llm.propose(meta_prompt, n)
            # A bare string is one reply; iterating it would make every character a candidate.
            replies = [result] if isinstance(result, str) else [r for r in result if isinstance(r, str)]
        except Exception as e:
            kind = e.kind if isinstance(e, LLMError) else type(e).__name__
            self.journal.append(generation, attempt, error=kind, message=str(e)[:300])
            raise
        self.journal.append(generation, attempt, replies=replies)
        return replies


def _done(value: Any) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future


def _failed(error: BaseException) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(error)
    return future


def append_journal(log_dir: str, entry: dict) -> None:
    """Journal one LLM answer (``replies``) or failure (``error``, ``message``), stamped with the time; never
    raises."""
    entry = {**entry, "time": time.time()}
    if "replies" in entry:
        entry["replies"] = [r[:_MAX_JOURNALED_CHARS] for r in entry["replies"]]
    try:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, JOURNAL_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
    except (OSError, TypeError, ValueError):
        logger.exception("could not journal an LLM answer in %s", log_dir)


def read_journal(log_dir: str, search_id: str, incarnation: str | None = None) -> dict[tuple[int, int], dict]:
    """``{(generation, ask): entry}`` of one search's journaled LLM answers, only those asked by ``incarnation``
    (the searcher object that saved the state being restored) if given; the first entry per key wins."""
    path = os.path.join(log_dir, JOURNAL_FILE)
    out: dict[tuple[int, int], dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by the crash
                    continue
                if (isinstance(entry, dict) and entry.get("search_id") == search_id
                        and (incarnation is None or entry.get("incarnation") == incarnation)):
                    out.setdefault((entry.get("generation"), entry.get("attempt")), entry)
    except FileNotFoundError:
        pass
    except OSError:
        logger.exception("could not read the LLM journal %s", path)
    return out

