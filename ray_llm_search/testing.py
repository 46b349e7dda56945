"""Test helpers for ``LLMSearch`` and for trainables of your own: a scripted LLM, a fake OpenAI-compatible
server, and a driver that feeds a searcher the events Tune would, without Ray.

- ``ScriptedLLM``: canned replies in order (an exception in the script is raised), then fresh numbered
  prompts, or the same lines every call; it counts calls and tokens like a real client and keeps every
  meta-prompt it was asked. ``gate``/``blocked_calls`` make chosen calls wait, like a slow LLM.
- ``FakeOpenAI``, ``Reply``, ``completion``, ``error``: a real HTTP server on 127.0.0.1 that answers
  ``POST /v1/chat/completions`` from a script (status, body, headers, a hang, closing after a reply), for
  ``OpenAIChat`` or any client of that API.
- ``drive(search, ...)``: Tune's events for a whole search, generation by generation (suggest, results, a
  completion per trial), with made-up results; ``scale_run(...)``: the searcher's own cost at scale, as
  ``examples/bench_searcher.py`` prints it and ``tests/test_scale.py`` asserts it.

Example:
    >>> from ray_llm_search import LLMSearch
    >>> from ray_llm_search.testing import ScriptedLLM, drive
    >>> search = LLMSearch(ScriptedLLM(), "Classify news.", ["seed a"], metric="acc", mode="max",
    ...                    population=2, generations=2, log_dir=tmp)
    >>> drive(search)   # trials handed out
    4
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ray_llm_search.llm.base import LLM, LLMError

JSON = {"Content-Type": "application/json"}


class ScriptedLLM(LLM):
    """An LLM that answers from a script.

    Args:
        script: replies in order, one per call (each a list of strings, as ``propose`` returns); an exception
            in it is raised by that call.
        then: once the script is used up, every call answers with these lines; default: ``n`` fresh prompts
            in one numbered reply, ``"1. {words} {call} 0"``, ... (never seen before, so always usable).
        words: the text of the fresh prompts.
        style: ``"chat"`` or ``"completion"`` (the meta-prompt the searcher builds for it).
        gate: the calls listed in ``blocked_calls`` (1-based; all calls if ``None``) wait until it is set.
        api_key: an attribute like a real client's (for tests that a secret never reaches saved state).

    ``calls`` counts calls, ``prompts`` keeps every meta-prompt, ``usage`` counts calls and tokens (words).
    """

    def __init__(self, script: list | None = None, *, then: list[str] | None = None, words: str = "llm idea",
                 style: str = "chat", gate: threading.Event | None = None, blocked_calls: set[int] | None = None,
                 api_key: str | None = None) -> None:
        super().__init__()
        self.script = list(script or [])
        self.then = None if then is None else list(then)
        self.words = words
        self.style = style
        self.gate = gate
        self.blocked_calls = blocked_calls
        self.api_key = api_key
        self.calls = 0
        self.prompts: list[str] = []

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        self.calls += 1
        call = self.calls
        self.prompts.append(meta_prompt)
        if self.gate is not None and (self.blocked_calls is None or call in self.blocked_calls):
            if not self.gate.wait(10):
                raise LLMError("timeout", "the test never opened the gate")
        if self.script:
            item = self.script.pop(0)
        elif self.then is not None:
            item = list(self.then)
        else:
            item = ["\n".join(f"{j + 1}. {self.words} {call} {j}" for j in range(n))]
        if isinstance(item, BaseException):
            raise item
        self._count(self.usage, calls=1, prompt_tokens=len(meta_prompt.split()),
                    completion_tokens=sum(len(str(r).split()) for r in item))
        return item

    def _transient(self) -> tuple[str, ...]:
        return ("gate",)  # a threading.Event does not pickle


# -- a fake OpenAI-compatible server ----------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer: status, body (dict as JSON, or raw bytes), headers, seconds to hang first, and
    whether the server stops listening after sending it (later connections are refused)."""

    status: int = 200
    body: dict | bytes = field(default_factory=dict)
    headers: dict = field(default_factory=lambda: dict(JSON))
    hang_s: float = 0.0
    close_after: bool = False


def completion(content: str | None = "1. a prompt", prompt_tokens: int = 10, completion_tokens: int = 5,
               usage: bool = True) -> dict:
    """A chat-completions response body with one choice (and ``usage`` unless ``usage=False``)."""
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_700_000_000, "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    return body


def error(message: str, code: str = "error") -> dict:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": code, "code": code}}


class FakeOpenAI:
    """A ThreadingHTTPServer on 127.0.0.1 answering POST /v1/chat/completions from ``script`` (``Reply``s in
    order; an exhausted script answers 599). ``requests`` records each request's arrival time, path,
    Authorization header and JSON body; ``base_url`` is what ``OpenAIChat(base_url=...)`` takes. ``close()``
    ends every hang and stops the server."""

    def __init__(self, script: list[Reply] | None = None) -> None:
        self.script: list[Reply] = list(script or [])
        self.requests: list[dict] = []
        self.release = threading.Event()  # ends every hang at close()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                arrived = time.monotonic()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake._lock:
                    fake.requests.append({"time": arrived, "path": self.path,
                                          "authorization": self.headers.get("Authorization"),
                                          "body": json.loads(raw or b"{}")})
                    if self.path != "/v1/chat/completions":
                        reply = Reply(404, error(f"no route {self.path}"))
                    elif fake.script:
                        reply = fake.script.pop(0)
                    else:
                        reply = Reply(599, error("script exhausted: unexpected request"))
                if reply.hang_s:
                    fake.release.wait(reply.hang_s)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:  # the client gave up (timeout)
                    pass
                if reply.close_after:
                    fake.stop_listening()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self._listening = True

    def stop_listening(self) -> None:
        """Close the listening socket now: from here on, connections to ``base_url`` are refused."""
        with self._lock:
            if not self._listening:
                return
            self._listening = False
        self.server.shutdown()  # from a handler thread: serve_forever runs in another
        self.server.server_close()

    def close(self) -> None:
        self.release.set()
        self.stop_listening()
        self.thread.join(timeout=5)


# -- Tune's events without Tune ---------------------------------------------------------------------------


def made_up_result(search, trial_id: str, config: dict, step: int) -> dict:
    """A result with the contract keys: the searcher's metric (a fixed pseudo-random value per trial and
    step), ``loss``, ``prompt_text`` (the start text and the step) and ``vectors_path``."""
    value = (sum(map(ord, f"{trial_id}:{step}")) * 7919 % 1000) / 1000
    return {search.metric or "metric": value, "loss": 1.0, "prompt_text": f"{config['prompt_init']} {step}",
            "step": step, "vectors_path": f"/v/{trial_id}.pt"}


def drive(search, result: Callable[[object, str, dict, int], dict] | None = None, results_per_trial: int = 1,
          max_wait_s: float = 60.0, on_generation: Callable[[int], None] | None = None) -> int:
    """Feed ``search`` Tune's events for its whole run, as a Tune loop with free workers would: every config
    it hands out, then ``results_per_trial`` results per trial (``result(search, trial_id, config, step)``,
    default ``made_up_result``) and a completion, until it says ``FINISHED``. ``on_generation(trials)`` is
    called whenever a generation has completed. Waits up to ``max_wait_s`` for each LLM round. Returns the
    trials handed out; raises ``TimeoutError`` if the searcher gives none for that long."""
    result = result or made_up_result
    counter, generations = 0, 0
    deadline = time.monotonic() + max_wait_s
    while True:
        batch = []
        while True:
            config = search.suggest(f"t{counter}")
            if config is None:
                if not batch:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no configs for {max_wait_s}s after {counter} trials")
                    time.sleep(0.001)  # the LLM thread is answering
                    continue
                break
            if config == "FINISHED":
                break
            batch.append((f"t{counter}", config))
            counter += 1
        if not batch:
            return counter
        deadline = time.monotonic() + max_wait_s
        for trial_id, config in batch:
            for step in range(results_per_trial):
                search.on_trial_result(trial_id, result(search, trial_id, config, step))
            search.on_trial_complete(trial_id, None)
        if on_generation is not None and len(search.records) != generations:
            generations = len(search.records)
            on_generation(counter)


def scale_run(population: int, generations: int, results_per_trial: int, log_dir: str,
              max_wait_s: float = 60.0) -> dict:
    """``LLMSearch`` driven through a whole search (``drive``) with an instant scripted LLM.

    Returns ``trials``, ``events``, ``llm_calls``, ``records``, ``cpu_ms_per_event`` (the searcher's own thread
    time, summaries and TensorBoard writes included), ``loop_ms_per_event`` (the whole driver loop) and
    ``sizes``: ``(generations done, trials handed out, pickled state bytes)`` after each generation."""
    from ray_llm_search import LLMSearch

    search = LLMSearch(ScriptedLLM(words="candidate about news topics"), "Benchmark task.",
                       ["seed prompt one", "seed prompt two"], metric="acc", mode="max", population=population,
                       generations=generations, elites=2, log_dir=log_dir)
    import tensorboardX  # noqa: F401  Tune's own TensorBoard logger imports it (and torch) at start-up anyway

    sizes: list[tuple[int, int, int]] = []
    started = time.process_time()
    trials = drive(search, results_per_trial=results_per_trial, max_wait_s=max_wait_s,
                   on_generation=lambda n: sizes.append((len(search.records), n, len(pickle.dumps(search.get_state())))))
    total_cpu = time.process_time() - started
    return {
        "population": population,
        "generations": generations,
        "trials": trials,
        "events": search._events,
        "llm_calls": search.llm.usage["calls"],
        "records": len(search.records),
        "cpu_ms_per_event": 1000 * search.cpu_seconds_per_event,
        "loop_ms_per_event": 1000 * total_cpu / max(1, search._events),
        "sizes": sizes,
    }
