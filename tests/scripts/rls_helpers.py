"""Helpers for the fault, resume, secrets and TensorBoard tests, and for ``resume_driver.py``.

Imported by module name (``rls_helpers``, with this folder on ``sys.path``) so that Ray workers and a
driver process started by a test find the same trainables and Tune can unpickle the same fake LLM.
Nothing here is used by the packages.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import time
import zlib

from ray_llm_search.llm.base import LLM
from ray_llm_search.testing import JSON, FakeOpenAI, Reply, completion, error  # noqa: F401  (the tests import them from here)

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRACT_KEYS = {"val_acc", "loss", "prompt_text", "step"}


# -- Ray -------------------------------------------------------------------------------------------------------


def ray_session():
    """A module fixture's body: a fresh 2-CPU Ray whose workers find this folder on their path."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


# -- trainables ------------------------------------------------------------------------------------------------


def score(text: str) -> float:
    """A deterministic 'accuracy' in [0.2, 0.7) for a start text."""
    return 0.2 + (zlib.crc32(text.encode()) % 50) / 100


def trivial_phase(config: dict) -> None:
    """A phase without a model that honours the DESIGN contract: reports val_acc, loss, prompt_text, step.

    ``steps`` evaluations after step 0, ``sleep_s`` per step; with ``checkpoint`` it reports a Tune checkpoint
    each time and, when Tune restarts it (max_failures, or a resumed experiment), continues after its last one.
    """
    from ray import tune

    steps = int(config.get("steps", 2))
    sleep_s = float(config.get("sleep_s", 0.0))
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder, open(os.path.join(folder, "state.json")) as f:
            start = json.load(f)["step"] + 1
    base = score(config.get("prompt_init") or "")
    words = (config.get("prompt_init") or "").split()[:10]
    for step in range(start, steps + 1):
        if sleep_s and step:
            time.sleep(sleep_s)
        value = min(0.99, base + 0.05 * step)
        metrics = {"val_acc": value, "loss": 1.0 - value, "prompt_text": " ".join(words + [f"w{step}"]), "step": step}
        if config.get("checkpoint"):
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "state.json"), "w") as f:
                    json.dump({"step": step}, f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)


def load_data_phase(config: dict) -> None:
    """Loads ``config["data"]`` as ``train_text_prompt`` does (same errors, no torch), then ``trivial_phase``."""
    from trainables.data import load_dataset

    load_dataset(config["data"])
    trivial_phase(config)


def faulty_text_prompt(config: dict) -> None:
    """``train_text_prompt`` with one injected fault, for tests only.

    ``config["fault"] = {"kind": "raise" | "sigkill", "step": N, "marker": path, "generation": g}``: the first
    phase of generation ``g`` that is about to report step ``N`` creates ``marker`` (atomically, so the fault
    happens once in the whole run), writes its trial id there, and then raises, or SIGKILLs its own process,
    before that report.
    """
    from unittest import mock

    from ray import tune

    from trainables import phase
    from trainables.text_prompt import train_text_prompt

    fault = config.get("fault") or {}
    real_report = phase._tune_report

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if (fault and metrics["step"] == fault["step"] and config.get("generation") == fault.get("generation", 0)
                and _claim(fault["marker"], tune.get_context().get_trial_id())):
            if fault["kind"] == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault before reporting step {metrics['step']}")
        real_report(metrics, checkpoint_dir)

    with mock.patch.object(phase, "_tune_report", report):
        train_text_prompt(config)


def _claim(marker: str, text: str) -> bool:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


# -- LLMs ------------------------------------------------------------------------------------------------------


class CallLogLLM(LLM):
    """A fake mentor whose every call appends a line to ``calls_file`` (shared by all processes of a test).

    Call number ``c`` (counted in the file) proposes ``idea c number i``: new texts in every round.
    """

    def __init__(self, calls_file: str) -> None:
        super().__init__()
        self.calls_file = calls_file

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        with open(self.calls_file, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "n": n, "time": time.time()}) + "\n")
        with open(self.calls_file) as f:
            call = len(f.read().splitlines())
        self._count(self.usage, calls=1)
        return ["\n".join(f"{i + 1}. idea {call} number {i}" for i in range(n))]


def read_jsonl(path: str) -> list[dict]:
    """The JSON lines of ``path``; [] while it does not exist yet."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def llm_calls(calls_file: str) -> list[dict]:
    return read_jsonl(calls_file)


def generation_records(log_dir) -> list[dict]:
    """``generations.jsonl`` of a search's ``log_dir``: one record per finished generation."""
    return read_jsonl(os.path.join(str(log_dir), "generations.jsonl"))


class LogCapture(logging.Handler):
    """Keeps the messages of the records it is handed (INFO and up)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# -- a fake OpenAI-compatible server: ray_llm_search.testing (FakeOpenAI, Reply, completion, error) ---------------


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- event files ------------------------------------------------------------------------------------------------


def read_events(folder: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, str]]]]:
    """Scalars ``{tag: [(step, value)]}`` and texts ``{tag: [(step, text)]}`` of every event file under
    ``folder``, read back as TensorBoard's server reads them (``plugin_event_accumulator``: everything is a
    tensor, and events a restarted writer purged are gone)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}
    for root, _, files in os.walk(folder):
        if not any(f.startswith("events.out.tfevents") for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("tensors", []):
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            for e in acc.Tensors(tag):
                value = tensor_util.make_ndarray(e.tensor_proto)
                if plugin == "scalars":
                    scalars.setdefault(tag, []).append((e.step, float(value)))
                elif plugin == "text":
                    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.flatten()]
                    texts.setdefault(tag, []).append((e.step, "\n".join(flat)))
    return scalars, texts


def nonfinite_phase(config: dict) -> None:
    """Reports a non-finite metric (and loss) for any start whose text names one: ``nan``, ``inf`` or ``-inf``
    give that value at every step; other starts report finite values as ``trivial_phase`` does."""
    from ray import tune

    text = config.get("prompt_init") or ""
    words = text.split()
    special = next((w for w in words if w in ("nan", "inf", "-inf")), None)
    base = score(text)
    for step in range(int(config.get("steps", 2)) + 1):
        value = float(special) if special else min(0.99, base + 0.05 * step)
        tune.report({"val_acc": value, "loss": float(special) if special else 1.0 - value,
                     "prompt_text": " ".join(words[:10] + [f"w{step}"]), "step": step})


def domain_phase(config: dict) -> None:
    """Fails on any Tune domain object in its config; otherwise reports like ``trivial_phase``, plus the
    config's ``lr`` and ``data/shots`` as metrics (so a test can read what the trial received)."""
    from ray import tune
    from ray.tune.search.sample import Domain

    def walk(node, path=""):
        if isinstance(node, Domain):
            raise TypeError(f"the trainable received a Tune domain at {path}: {node!r}")
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")

    walk(config)
    for step in range(2):
        value = score(config.get("prompt_init") or "") + 0.05 * step
        tune.report({"val_acc": value, "loss": 1.0 - value, "prompt_text": f"{config['prompt_init']} w{step}",
                     "step": step, "lr_seen": float(config["lr"]), "shots_seen": int(config["data"]["shots"])})


class FixedLLM(LLM):
    """Proposes the same lines in every round; keeps every meta-prompt it was shown in ``prompts_file``."""

    def __init__(self, lines: list[str], prompts_file: str) -> None:
        super().__init__()
        self.lines = list(lines)
        self.prompts_file = prompts_file

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        with open(self.prompts_file, "a") as f:
            f.write(json.dumps({"meta_prompt": meta_prompt}) + "\n")
        self._count(self.usage, calls=1)
        return ["\n".join(f"{i + 1}. {line}" for i, line in enumerate(self.lines))]
