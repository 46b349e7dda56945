"""The channel from the searcher to a phase that is already running (``LLMSearch(overlap=True)``).

A running Tune trial gets no new config, so the candidates of an LLM round that ends while the chain descends
reach it here: per search one mailbox, per chain (lineage) one append-only list of candidate messages and a
"closed" flag (no round will post to this chain again), and one "asking" flag (a round is being asked now: a
phase on the mentor's node then leaves the mentor its threads). The searcher posts; a phase reads the messages
past its cursor at each evaluation point (``read(key, cursor)``) and screens them against its vectors there; the
cursor (how many it has screened) travels in the phase's restart checkpoint and in its results, so a phase
restarted from a checkpoint neither skips nor screens a candidate twice.

Two implementations of one interface:

- ``ActorMailbox``: a small named Ray actor (``MailboxActor``, ``num_cpus=0``) owned by the driver, created with
  Ray Core's documented API (``ray.remote``, ``.options(name=..., namespace=..., get_if_exists=True)``,
  ``ray.get_actor``). Trials on any node reach it by name; nothing goes through a path one node sees. Its name
  comes from the search's id, so a search restored by ``Tuner.restore`` makes it again under the same name and
  re-posts every message it had posted (``post`` is idempotent by message id).
- ``LocalMailbox``: the same in this process (a lock and dicts), for a search driven without Ray
  (``compare.drive_inline``, ``testing.drive``); a phase finds it by id in ``LOCAL``.

A phase opens either from the plain-data ``spec`` in its config (``open_mailbox``). No torch, no Ray import at
module load.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

# In-process mailboxes by id (LocalMailbox): what a phase run in the searcher's process opens.
LOCAL: dict[str, LocalMailbox] = {}
_ids = itertools.count()


class _Store:
    """Per key: the messages in posting order (each a dict with a unique ``id``) and whether it is closed."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict]] = {}
        self.closed: set[str] = set()
        self.asking = False

    def post(self, key: str, messages: list[dict]) -> int:
        box = self.messages.setdefault(key, [])
        known = {m.get("id") for m in box}
        for m in messages:
            if m.get("id") not in known:  # a restored search posts again what it had posted
                box.append(dict(m))
                known.add(m.get("id"))
        return len(box)

    def close(self, key: str) -> None:
        self.closed.add(key)

    def set_asking(self, asking: bool) -> None:
        self.asking = bool(asking)

    def read(self, key: str, cursor: int) -> tuple[list[dict], bool, bool]:
        box = self.messages.get(key, [])
        return [dict(m) for m in box[max(0, int(cursor)):]], key in self.closed, self.asking


class LocalMailbox:
    """The mailbox in this process (thread-safe: the searcher posts from its LLM thread)."""

    def __init__(self) -> None:
        self._store = _Store()
        self._lock = threading.Lock()
        self.id = f"local-{next(_ids)}"
        LOCAL[self.id] = self

    @property
    def spec(self) -> dict:
        return {"kind": "local", "id": self.id}

    def post(self, key: str, messages: list[dict]) -> None:
        with self._lock:
            self._store.post(key, messages)

    def close(self, key: str) -> None:
        with self._lock:
            self._store.close(key)

    def set_asking(self, asking: bool) -> None:
        with self._lock:
            self._store.set_asking(asking)

    def read(self, key: str, cursor: int) -> tuple[list[dict], bool, bool]:
        with self._lock:
            return self._store.read(key, cursor)

    def shutdown(self) -> None:
        LOCAL.pop(self.id, None)


class MailboxActor:
    """The Ray actor behind ``ActorMailbox`` (one per search; its methods run one at a time)."""

    def __init__(self) -> None:
        self._store = _Store()

    def post(self, key: str, messages: list[dict]) -> int:
        return self._store.post(key, messages)

    def close(self, key: str) -> None:
        self._store.close(key)

    def set_asking(self, asking: bool) -> None:
        self._store.set_asking(asking)

    def read(self, key: str, cursor: int) -> tuple[list[dict], bool, bool]:
        return self._store.read(key, cursor)


class ActorMailbox:
    """A named ``MailboxActor`` in the driver's Ray namespace, made (or found) on construction. Posting does not
    wait for the actor (Ray runs one caller's calls to an actor in order)."""

    def __init__(self, name: str) -> None:
        import ray

        self.name = name
        self.namespace = ray.get_runtime_context().namespace
        actor_class = ray.remote(num_cpus=0, max_restarts=0)(MailboxActor)
        self._actor = actor_class.options(name=name, namespace=self.namespace, get_if_exists=True).remote()

    @property
    def spec(self) -> dict:
        import ray

        return {"kind": "ray", "name": self.name, "namespace": self.namespace,
                "node_id": ray.get_runtime_context().get_node_id()}

    def post(self, key: str, messages: list[dict]) -> None:
        self._actor.post.remote(key, messages)

    def close(self, key: str) -> None:
        self._actor.close.remote(key)

    def set_asking(self, asking: bool) -> None:
        self._actor.set_asking.remote(asking)

    def read(self, key: str, cursor: int, timeout_s: float = 30.0) -> tuple[list[dict], bool, bool]:
        import ray

        return ray.get(self._actor.read.remote(key, cursor), timeout=timeout_s)

    def shutdown(self) -> None:
        import ray

        try:
            ray.kill(self._actor)
        except Exception:  # already gone with its driver
            pass


class _ActorReader:
    """A phase's handle on an ``ActorMailbox`` found by name (``ray.get_actor``). A read waits at most
    ``timeout_s`` for the actor's answer (an actor whose process is still starting would otherwise hold the phase
    up); an answer that comes later is taken at the next read, so the cursor it was asked with is still the
    phase's."""

    def __init__(self, name: str, namespace: str | None) -> None:
        self.name, self.namespace = name, namespace
        self._actor = None
        self._pending = None  # (key, cursor, ObjectRef) of a read not answered yet

    def read(self, key: str, cursor: int, timeout_s: float = 1.0) -> tuple[list[dict], bool, bool]:
        import ray

        try:
            if self._actor is None:
                self._actor = ray.get_actor(self.name, namespace=self.namespace)
            if self._pending is None or self._pending[:2] != (key, cursor):
                self._pending = (key, cursor, self._actor.read.remote(key, cursor))
            ready, _ = ray.wait([self._pending[2]], timeout=timeout_s)
            if not ready:
                raise TimeoutError(f"the mailbox {self.name!r} has not answered within {timeout_s}s")
            ref, self._pending = self._pending[2], None
            return ray.get(ref)
        except TimeoutError:
            raise
        except Exception:
            self._actor = self._pending = None  # a restored driver makes it again under the same name
            raise


def open_mailbox(spec: dict) -> Any:
    """A reader (``read(key, cursor) -> (messages, closed, asking)``) for the mailbox a config's ``spec`` names; raises
    ``ValueError`` for a spec it does not know."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "local":
        box = LOCAL.get(spec.get("id"))
        if box is None:
            raise ValueError(f"no in-process mailbox {spec.get('id')!r} here (a local mailbox serves only phases "
                             "run in the searcher's own process)")
        return box
    if kind == "ray":
        return _ActorReader(str(spec["name"]), spec.get("namespace"))
    raise ValueError(f"mailbox spec must have kind 'local' or 'ray', got {spec!r}")


def make_mailbox(search_id: str) -> LocalMailbox | ActorMailbox:
    """The mailbox of one search: a named Ray actor where this process is connected to Ray (a Tune driver),
    else in this process."""
    try:
        import ray

        connected = ray.is_initialized()
    except ImportError:
        connected = False
    if connected:
        return ActorMailbox(f"llm-search-mailbox-{search_id}")
    return LocalMailbox()
