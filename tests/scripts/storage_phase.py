"""An S3-compatible server on loopback (moto's standalone server) and a toy ``run_phase`` trainable, for the
object-storage tests (``tests/test_object_store.py``).

Imported by module name (this folder on ``sys.path`` / the workers' ``PYTHONPATH``). The toy phase trains a
prompt of 2 x 4 vectors and a 4-value head towards a target; its loss is a continuous function of both, so a
phase that resumes from anything but the exact vectors and head of its parent scores differently at step 0, and
its projected text (``"proj <sum>"``) embedded again is far from both. It raises when ``trainables.phase``
logs "cannot resume", so that a lost elite fails the trial instead of going unnoticed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

import torch

from ray_llm_search.contract import PromptOnly

BUCKET = "rls-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rls-test-key", "AWS_SECRET_ACCESS_KEY": "rls-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
TARGET = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.5, 0.25, -0.5, 1.0]])
HEAD_TARGET = torch.tensor([0.3, -0.2, 0.1, 0.4])


class MotoServer:
    """moto's S3 server on 127.0.0.1 at a free port, started by this process and stopped by its PID.

    ``uri(prefix)`` is an ``s3://`` URI on it that pyarrow (and so Tune's ``storage_path``) opens:
    ``s3://rls-test/<prefix>?endpoint_override=127.0.0.1:<port>&scheme=http&region=us-east-1&allow_delayed_open=true``
    (moto 5.2 answers pyarrow's CompleteMultipartUpload in a way pyarrow 26 takes for an error and retries for
    25 s; with ``allow_delayed_open`` a stream closed before its first part is one PutObject). The dummy
    credentials in ``CREDENTIALS`` must be in the environment of every process that opens it."""

    def __init__(self, log_path: str) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/", timeout=2).read()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start (see {log_path})") from None
                time.sleep(0.2)
        self.filesystem().create_dir(BUCKET)

    def filesystem(self):
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                       secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                                       scheme="http", endpoint_override=self.endpoint, allow_bucket_creation=True,
                                       allow_delayed_open=True)

    def uri(self, prefix: str) -> str:
        return (f"s3://{BUCKET}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"
                "&allow_delayed_open=true")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object under ``rls-test/<prefix>``."""
        import pyarrow.fs

        infos = self.filesystem().get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/{prefix}".rstrip("/"),
                                                                        recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.File)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class ToyHeadModel(PromptOnly):
    """A ``PromptModel`` with a trained head: 2 x 4 prompt vectors and a 4-value head (its extra state)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.head = torch.nn.Parameter(torch.zeros(4))

    def identity(self) -> dict:
        return {"model": "toy-head", "shape": [2, 4]}

    def init_vectors(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(map(ord, text or "empty")))
        return torch.randn(2, 4, generator=g) * 2

    def project(self, vectors: torch.Tensor) -> str:
        return f"proj {float(vectors.sum()):.3f}"

    def loss(self, vectors: torch.Tensor, batch: list) -> torch.Tensor:
        return ((vectors - TARGET) ** 2).sum() + ((self.head - HEAD_TARGET) ** 2).sum()

    def evaluate(self, vectors: torch.Tensor, examples: list) -> tuple[float, float]:
        with torch.no_grad():
            dist = float(self.loss(vectors, examples))
        acc = round(max(0.0, 1.0 - dist / 40.0) * len(examples)) / len(examples)
        return dist, acc

    def extra_parameters(self) -> list:
        return [self.head]

    def extra_state(self) -> dict:
        return {"head": self.head.detach().clone()}

    def load_extra_state(self, state: dict) -> None:
        if "head" in state:
            with torch.no_grad():
                self.head.copy_(state["head"])


class _Seen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def toy_phase(config: dict) -> None:
    """A Tune trainable: one ``run_phase`` of ``ToyHeadModel``; reports where it ran (``node_id``) and, where the
    config names a ``marker_path``, whether that file exists on this node (``sees_marker``); raises if the phase
    could not resume from its ``resume_from``."""
    import ray

    from trainables.phase import run_phase

    seen = _Seen()
    phase_logger = logging.getLogger("trainables.phase")
    phase_logger.addHandler(seen)
    try:
        node = ray.get_runtime_context().get_node_id()
        model = ToyHeadModel()
        pause = float(config.get("step_sleep_s", 0.0))
        if pause:  # a slower phase, for a test that acts while it runs
            loss = model.loss
            model.loss = lambda vectors, batch: (time.sleep(pause), loss(vectors, batch))[1]
        train, val = [("t", i) for i in range(8)], [("v", i) for i in range(40)]
        config = {"lr": 0.05, **config}
        time.sleep(float(config.get("sleep_s", 0.0)))
        from ray import tune

        marker = config.get("marker_path")
        where = {"node_id": node, **({"sees_marker": os.path.exists(marker)} if marker else {})}

        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report({**metrics, **where}, checkpoint=checkpoint)

        run_phase(config, model, train, val, report=report)
    finally:
        phase_logger.removeHandler(seen)
    lost = [m for m in seen.messages if "cannot resume" in m]
    if lost:
        raise RuntimeError(f"elite lost its vectors: {lost}")


@contextlib.contextmanager
def s3_server(folder: str):
    """A ``MotoServer`` (its log in ``folder``) with ``CREDENTIALS`` in this process's environment meanwhile."""
    old = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = MotoServer(os.path.join(folder, "moto.log"))
    try:
        yield server
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- checks ----------------------------------------------------------------------------------------------------


def trajectories(search) -> list[dict]:
    """A search's trajectories as plain data (what ``storage_driver.py`` writes for the test to read)."""
    return [{"trial_id": t.trial_id, "generation": t.generation, "origin": t.origin, "resume_from": t.resume_from,
             "vectors_path": t.vectors_path, "evaluations": [[e.step, e.metric, e.loss] for e in t.evaluations]}
            for t in search.trajectories]


def elites_and_parents(trajectories: list[dict]) -> list[tuple]:
    """(elite, parent) for every elite of generations 1+ (``trajectories()``'s dicts)."""
    by_path = {t["vectors_path"]: t for t in trajectories if t["vectors_path"]}
    return [(t, by_path.get(t["resume_from"])) for t in trajectories if t["origin"] == "elite"]


def phase_best(trajectory: dict) -> tuple[float, float]:
    """The phase's own best (accuracy, then lower loss): what it saved as its vectors file."""
    _, metric, loss = max(trajectory["evaluations"], key=lambda e: (e[1], -e[2]))
    return metric, loss


def check_exact_resumes(trajectories: list[dict], results: dict, elites_expected: int) -> None:
    """Every elite resumed from an ``s3://`` location of its parent (the generation before), and its start,
    evaluated again (not reused) from the loaded vectors and head, scores exactly its parent's best."""
    pairs = elites_and_parents(trajectories)
    assert len(pairs) == elites_expected, [t["trial_id"] for t, _ in pairs]
    for elite, parent in pairs:
        assert elite["resume_from"] and elite["resume_from"].startswith("s3://"), elite["resume_from"]
        assert parent is not None and parent["generation"] == elite["generation"] - 1, elite["resume_from"]
        start = next(r for r in results[elite["trial_id"]] if r["step"] == 0 and not r.get("screen"))
        assert not start.get("reused")
        assert (start["val_acc"], start["loss"]) == phase_best(parent), (elite["trial_id"], parent["trial_id"])
