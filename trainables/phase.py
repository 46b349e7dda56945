"""The shared gradient phase: start from text, an elite's vectors or a restart checkpoint; take K steps;
evaluate every k; report the contract keys; keep the final and best vectors.

A ``PromptModel`` (text soft prompts, CLIP CoOp, your own) supplies the model-specific parts:

- ``init_vectors(text) -> Tensor[L, D]`` and ``project(vectors) -> str``
- ``loss(vectors, batch) -> scalar Tensor`` on training examples
- ``evaluate(vectors, examples) -> (loss, accuracy)``; optional ``evaluate_each(vectors, examples) -> (loss,
  accuracy, [right per example])`` for the paired screening test
- ``extra_parameters() -> list[Parameter]`` also trained (e.g. a linear head), with
  ``extra_state()`` / ``load_extra_state(state)``
- ``identity() -> dict`` that vectors must match to be loaded (model name, shape)
- optional ``lr_at(base_lr, step) -> float``: the learning rate of optimizer step ``step`` (1-based) for a
  schedule (CoOp's warm-up + cosine); without it the rate stays ``lr``. It is a function of the step alone, so
  a trial restarted from its checkpoint continues the schedule where it stopped.

Screened starts (the searcher sets these keys; see ``LLMSearch(screen=...)``):

- ``prompt_candidates``: texts the phase evaluates on validation *before* its first step; the phase starts
  from the best of its own start and these (a candidate must beat the start: higher accuracy, or equal
  accuracy at a lower loss), so that a candidate takes the place of a chain only when it beats the chain. Each screened candidate that loses is reported as one result with
  ``screen: True`` (it is an evaluation: it counts in the budget); the winner is the phase's step-0 result.
- ``screen_margin``: a candidate takes the start's place only if it gets more than this many additional
  validation examples right (default 0: any gain in accuracy, or equal accuracy at a lower loss). On a small
  validation split a one-example gain is mostly luck; a margin keeps chains from being displaced by it.
- ``screen_test``: ``"gain"`` (default: any gain beyond the margin wins) or ``"paired"`` (a candidate must be
  right on significantly more of the examples where it and the start disagree: a sign test, its level shared
  among the candidates; needs a model with ``evaluate_each``). The best of several candidates beats a chain by
  a few examples through luck alone; the paired test asks for a gain that luck rarely gives.
- ``candidate_start``: ``"text"`` (default: a candidate starts from its token embeddings) or ``"mix"`` (a warm
  restart: ``(1 - mix_alpha) * start + mix_alpha * embed(candidate)``, where ``start`` is the resumed vectors).
- ``reuse_start_score``: a phase that resumes from a vectors file saved with its validation score, on the same
  validation examples, takes that score as its step-0 evaluation instead of computing it again (reported with
  ``reused: True``; it costs no forward pass).
- ``project_best``: after its last step the phase evaluates the projection of its best vectors *as text*
  (the nearest tokens, embedded again) and reports it as one result with ``screen: True, projection: True``
  just before its final result: the text's own score, which the vectors' score usually overstates, for a
  mentor that is shown texts with what they score as text (``LLMSearch(mentor_scores="text")``). One
  evaluation, counted in ``evaluations``.
- ``vector_dir``: where the phase keeps its vectors files (``<vector_dir>/<trial_id>.pt``): a local path or a URI
  on any pyarrow filesystem. Inside Tune with ``storage_path`` on object storage (not the local filesystem), a
  local ``vector_dir`` is replaced by ``vectors/`` in the trial's own folder there (``vector_location``), so that
  the files reach storage every node reads; ``vectors_path`` is then a URI that ``load_vectors`` opens anywhere.
- ``mailbox`` (``LLMSearch(overlap=True)``): where candidates that arrive while the phase descends are posted
  (``ray_llm_search.mailbox``: ``kind`` and where, ``key`` (the chain), ``cursor`` (how many of its messages earlier
  phases screened), ``drain``, ``wait_s``). At each evaluation point, after reporting the chain's result, the
  phase reads the messages past its cursor and screens them as ``prompt_candidates`` are screened at a start,
  against the vectors it has just evaluated (the same test, one evaluation each, every loser a ``screen`` row);
  a winner replaces the vectors (a fresh optimizer) and is reported at that step with ``adopted: True``, ``start``
  and ``start_text``. ``drain``: after its last evaluation the phase waits (at most ``wait_s``, sleeping) until
  the mailbox says no more will come, screening what arrives; its seconds waiting are ``wait_s`` in its last
  result, sent again after the wait. The cursor travels in results (``mailbox_cursor``) and restart checkpoints.
- ``keep_lowest_loss``: besides its best vectors (by accuracy, then loss: what an elite resumes from), the phase
  keeps the vectors of its lowest validation loss in ``<vector_dir>/<trial_id>.loss.pt`` and reports that path
  as ``loss_vectors_path``, for a search whose final prompt is chosen by loss (``LLMSearch(select="loss")``).

Every result carries ``evaluations``: the forward evaluations this phase has computed so far (reused scores
excluded), so that a budget can be counted from what trials report.

Restarts from a Tune checkpoint (``tune.get_checkpoint()``): a checkpoint this trial wrote (Tune's
``max_failures`` after a fault, or a paused trial resumed) continues where it stopped, with its steps, best so
far, optimizer state and batch order. A checkpoint another trial wrote is an *exploit* (Tune's
``PopulationBasedTraining`` gives the exploited trial the donor's latest checkpoint and a perturbed config): the
phase takes the donor's vectors, head, optimizer state, step and batch order, its own config's ``lr`` (what PBT
explored; the optimizer state would otherwise bring back the donor's), and evaluates its start (one evaluation,
reported with ``start: "exploit"`` and ``exploited_from``, as any phase that starts from another chain's vectors
does); its best and lowest-loss files then hold its own evaluations since the exploit, and ``evaluations``
continues the donor's count (count such a trial's evaluations by its results).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from ray_llm_search import contract

logger = logging.getLogger(__name__)

PHASE_DEFAULTS = {
    "steps": 30,
    "eval_every": 10,
    "batch_size": 16,
    "lr": 0.05,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "candidate_start": "text",
    "mix_alpha": 0.5,
    "screen_margin": 0,
    "screen_test": "gain",
}
SCREEN_TESTS = ("gain", "paired")
# Keys of every result that time the phase (wall-clock: they differ between two runs of the same phase).
TIMING_KEYS = contract.TIMING_KEYS
# One-sided level of the paired test, shared (Bonferroni) among the candidates a phase screens.
PAIRED_ALPHA = 0.05
VECTORS_FORMAT = 1


def _in_tune() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        return _in_tune_session()
    except ImportError:
        return False


def is_uri(path: Any) -> bool:
    """Whether ``path`` names a location on a pyarrow filesystem by URI (``s3://...``, ``gs://...``) rather
    than a local path."""
    return isinstance(path, str) and "://" in path


def join_location(base: str, name: str) -> str:
    """``name`` inside the folder ``base``: a local path, or a URI whose query (``?endpoint_override=...``)
    stays at its end."""
    if not is_uri(base):
        return os.path.join(base, name)
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def filesystem_uri(fs, path: str) -> str:
    """A URI for ``path`` on the pyarrow filesystem ``fs`` that ``pyarrow.fs.FileSystem.from_uri`` opens again on
    any node: a plain path for the local filesystem; for S3 the endpoint, scheme, region and delayed open the
    filesystem was made with (never its credentials, which each node takes from its own environment)."""
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return path
    if isinstance(fs, pyarrow.fs.S3FileSystem):
        from urllib.parse import urlencode

        options = fs.__reduce__()[1][0]
        query = {k: options[k] for k in ("endpoint_override", "scheme", "region") if options.get(k)}
        if options.get("allow_delayed_open"):
            query["allow_delayed_open"] = "true"
        if query.get("scheme") == "https":
            del query["scheme"]
        return f"s3://{path}" + (f"?{urlencode(query)}" if query else "")
    if isinstance(fs, pyarrow.fs.GcsFileSystem):
        return f"gs://{path}"
    return f"{fs.type_name}://{path}"


def _open_uri(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def load_vectors(path: str, identity: dict) -> dict:
    """A saved vectors file, checked against the model it is loaded into. ``path`` is a local path or a URI
    on any pyarrow filesystem (``s3://bucket/...``, ``gs://...``: what a phase run with Tune's storage on object
    storage reports as its ``vectors_path``)."""
    source: Any = path
    if is_uri(path):
        import pyarrow.fs

        try:
            fs, fs_path = _open_uri(path)
            if fs.get_file_info(fs_path).type != pyarrow.fs.FileType.File:
                raise FileNotFoundError(path)
            with fs.open_input_stream(fs_path) as f:
                source = io.BytesIO(f.read())
        except FileNotFoundError as e:
            raise ValueError(f"prompt vectors file not found: {path!r}") from e
        except Exception as e:  # an unreachable store, a bad URI, no credentials
            raise ValueError(f"cannot read prompt vectors from {path!r}: {e}") from e
    elif not os.path.isfile(path):
        raise ValueError(f"prompt vectors file not found: {path!r}")
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"cannot read prompt vectors from {path!r}: {e}") from e
    if not isinstance(saved, dict) or saved.get("format") != VECTORS_FORMAT or "prompt" not in saved:
        raise ValueError(f"{path!r} is not a ray-llm-search prompt vectors file")
    mismatch = {k: (saved.get("identity", {}).get(k), v) for k, v in identity.items()
                if saved.get("identity", {}).get(k) != v}
    if mismatch:
        raise ValueError(f"prompt vectors in {path!r} were made for another model: {mismatch} (saved, here)")
    return saved


def save_vectors(path: str, prompt: torch.Tensor, extra: dict, identity: dict, **meta: Any) -> None:
    """Write a vectors file (prompt, the model's extra state such as a trained head, identity, ``meta``) to a
    local path (atomically: a temporary file renamed) or a URI on any pyarrow filesystem (one object written
    whole)."""
    saved = {"format": VECTORS_FORMAT, "prompt": prompt.detach().cpu().clone(), "extra": extra,
             "identity": identity, **meta}
    if is_uri(path):
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        fs, fs_path = _open_uri(path)
        parent = fs_path.rsplit("/", 1)[0]
        if fs.type_name not in ("s3", "gcs") and parent and parent != fs_path:  # object stores have no folders
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(fs_path) as f:
            f.write(buffer.getvalue())
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(saved, tmp)
    os.replace(tmp, path)


def check_config(config: dict) -> dict:
    """The phase keys of ``config`` with their defaults, validated; raises ``ValueError`` naming a bad value.

    Cheap and model-free: a trainable calls it before loading its model, so that a typo fails in a second.
    """
    cfg = {**PHASE_DEFAULTS, **{k: v for k, v in config.items() if k in PHASE_DEFAULTS}}
    try:
        steps, eval_every, batch_size = int(cfg["steps"]), int(cfg["eval_every"]), int(cfg["batch_size"])
        lr, weight_decay = float(cfg["lr"]), float(cfg["weight_decay"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"steps, eval_every, batch_size must be integers and lr, weight_decay numbers; got "
                         f"{[cfg[k] for k in ('steps', 'eval_every', 'batch_size', 'lr', 'weight_decay')]}") from e
    if steps < 0 or eval_every < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 0, eval_every >= 1, batch_size >= 1; got {steps}, {eval_every}, {batch_size}")
    if not (lr > 0 and math.isfinite(lr)) or not weight_decay >= 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0; got {cfg['lr']}, {cfg['weight_decay']}")
    if cfg["optimizer"] not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg['optimizer']!r}")
    if cfg["candidate_start"] not in ("text", "mix"):
        raise ValueError(f"candidate_start must be 'text' or 'mix', got {cfg['candidate_start']!r}")
    try:
        alpha = float(cfg["mix_alpha"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"mix_alpha must be a number in (0, 1], got {cfg['mix_alpha']!r}") from e
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"mix_alpha must be a number in (0, 1], got {cfg['mix_alpha']!r}")
    try:
        margin = float(cfg["screen_margin"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"screen_margin must be a number of validation examples >= 0, got {cfg['screen_margin']!r}") from e
    if not margin >= 0:
        raise ValueError(f"screen_margin must be a number of validation examples >= 0, got {cfg['screen_margin']!r}")
    if cfg["screen_test"] not in SCREEN_TESTS:
        raise ValueError(f"screen_test must be one of {SCREEN_TESTS}, got {cfg['screen_test']!r}")
    candidates = config.get("prompt_candidates") or []
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise ValueError(f"prompt_candidates must be a list of texts, got {candidates!r}")
    return {**cfg, "steps": steps, "eval_every": eval_every, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "mix_alpha": alpha, "screen_margin": margin}


def evaluate_logits(logits: Callable, vectors: torch.Tensor, examples: list, device,
                    batch_size: int = 32) -> tuple[float, float, list[bool]]:
    """Mean cross-entropy, accuracy and per-example correctness of ``logits(vectors, batch) -> [B, C]`` over
    ``examples`` in batches, without a graph (a trained head would otherwise build one for nothing): the
    ``evaluate_each`` of any classifier-style ``PromptModel``."""
    import torch.nn.functional as F

    total, right = 0.0, []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = examples[i : i + batch_size]
            out = logits(vectors.detach(), batch).float()
            labels = torch.as_tensor([e.label for e in batch], device=device)
            total += float(F.cross_entropy(out, labels, reduction="sum"))
            right += [bool(x) for x in (out.argmax(-1) == labels).tolist()]
    return total / len(examples), sum(right) / len(examples), right


def examples_key(examples: list) -> str:
    """A fingerprint of an evaluation split: a saved score is reused only on the same examples."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(repr(e).encode("utf-8", "replace"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA where there is one, else the CPU; any other name as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(name: str, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The phase's optimizer by its config name: ``"adamw"`` (``torch.optim.AdamW``) or ``"sgd"``
    (``torch.optim.SGD``, momentum 0.9)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def run_phase(config: dict, model, train: list, val: list,
              report: Callable[[dict, str | None], None] | None = None, started: float | None = None) -> dict:
    """Run one gradient phase and return its best evaluation.

    Args:
        config: the trial config (the contract keys the searcher adds plus ``steps``, ``eval_every``,
            ``batch_size``, ``lr``, ``optimizer``; optionally the screened-start keys of the module docstring).
        model: a ``PromptModel`` (see module docstring).
        train, val: examples; the phase never sees a test split.
        report: ``report(metrics, checkpoint_dir)``; default ``ray.tune.report`` inside Tune, else nothing.
        started: ``time.time()`` when the trainable was entered (before its model and data were fetched), for
            the timing keys; default: now.

    Timing keys in every result: ``started_at`` (that wall-clock time), ``setup_s`` (seconds from it until the
    phase was ready to evaluate its start: model, data and vectors in hand) and, once the first gradient step
    has begun, ``first_step_s`` (seconds from ``started_at`` to that step, start evaluations included);
    ``first_compute_s``: seconds from ``started_at`` to the start of its first evaluation or step (what a
    phase waits before it computes anything; a screening phase evaluates its candidates before its first step);
    ``elapsed_s``: seconds from ``started_at`` to this report; ``report_s``: seconds the phase has spent sending
    its earlier results (its restart checkpoints' files and, inside Tune, the report itself, which waits until
    Tune's driver has taken the result).
    """
    return Phase(config, model, train, val, report, started).run()


class Phase:
    """One gradient phase (``run_phase``): ``prepare()`` finds its start (a restart checkpoint, an elite's
    vectors or text, screened candidates) and its optimizer; ``step(i)`` is one gradient step, the very step a
    benchmark times; ``evaluate_and_report`` scores the prompt, keeps its vectors and reports; ``run()`` is
    all of it."""

    def __init__(self, config: dict, model, train: list, val: list,
                 report: Callable[[dict, str | None], None] | None = None, started: float | None = None) -> None:
        self.started = time.time() if started is None else float(started)
        self.cfg = check_config(config)
        if not train or not val:
            raise ValueError(f"a phase needs training and validation examples; got {len(train)} and {len(val)}")
        self.config, self.model, self.train, self.val = config, model, train, val
        self.in_tune = _in_tune()
        self.report = report or (_tune_report if self.in_tune else (lambda metrics, ckpt: None))
        if self.in_tune:
            match_threads()
        self.trial_id = config.get("trial_id") or (_trial_id() if self.in_tune else "local")
        seed = int(config.get("phase_seed", 0))
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.identity = model.identity()
        self.vector_dir = vector_location(config.get("vector_dir"), self.in_tune)
        self.vectors_path = join_location(self.vector_dir, f"{self.trial_id}.pt") if self.vector_dir else None
        self.loss_path = (join_location(self.vector_dir, f"{self.trial_id}.loss.pt")
                          if self.vector_dir and config.get("keep_lowest_loss") else None)
        self.val_key = examples_key(val)
        self.evaluations = 0
        self._each = getattr(model, "evaluate_each", None)
        # per validation example, right or wrong, of the last evaluation and of a saved start score (if known)
        self.right: dict = {"last": None, "known": None}
        self.best: dict | None = None
        self.lowest_loss: float | None = None  # the lowest finite validation loss so far (kept in loss_path)
        self.start_step = 0
        self.start_right: list | None = None
        self.timing: dict = {}
        self.restored = _restart_state() if self.in_tune else None
        # the trial whose checkpoint this phase restarts from, where it is another's (a PBT exploit)
        donor = (self.restored or {}).get("trial_id")
        self.exploited_from = donor if donor is not None and donor != self.trial_id else None
        self.prompt: torch.nn.Parameter | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._lr_at = getattr(model, "lr_at", None)
        self._base_lr = float(self.cfg["lr"])
        # overlap: candidates posted while the phase runs (see the module docstring's ``mailbox``)
        spec = config.get("mailbox")
        self.mailbox: dict | None = dict(spec) if isinstance(spec, dict) and spec.get("key") is not None else None
        self.cursor = int(self.mailbox.get("cursor") or 0) if self.mailbox else 0
        if self.restored is not None and self.mailbox and "mailbox_cursor" in self.restored:
            self.cursor = int(self.restored["mailbox_cursor"])
        self._reader = None
        self.threads = torch.get_num_threads()  # the phase's own (match_threads), lent to the mentor while it asks
        self._mentor_node = self._on_mentor_node()
        self._last: tuple | None = None  # (loss, acc, per-example results) of the chain's last evaluation
        self._last_metrics: dict | None = None
        self._screen_rows = 0
        self._read_failed = 0
        if self.mailbox and self.cfg["screen_test"] == "paired" and self._each is None:
            raise ValueError("screen_test='paired' needs a model with evaluate_each(vectors, examples) -> (loss, acc, "
                             f"right per example); {type(model).__name__} has none")

    def evaluate(self, vectors: torch.Tensor) -> tuple[float, float]:
        """(loss, accuracy) on validation, counted in ``evaluations``."""
        self.evaluations += 1
        t = time.perf_counter()
        try:
            if self._each is None:
                self.right["last"] = None
                return self.model.evaluate(vectors.detach(), self.val)
            loss, acc, flags = self._each(vectors.detach(), self.val)
            self.right["last"] = list(flags)
            return loss, acc
        finally:
            self._compute(time.perf_counter() - t)

    def _compute(self, seconds: float) -> None:
        """Count ``seconds`` of a step or an evaluation in ``compute_s`` (the phase's own compute, timed where
        it runs: what a run's wall is compared with when the machine's speed drifts between measurements); the
        first one's start is ``first_compute_s``."""
        if "first_compute_s" not in self.timing and "started_at" in self.timing:
            self.timing["first_compute_s"] = round(time.time() - seconds - self.started, 4)
        self.timing["compute_s"] = self.timing.get("compute_s", 0.0) + seconds

    def prepare(self) -> tuple[dict, list]:
        """The start vectors and the optimizer; returns the start's description and the screened candidates
        that lost (``({}, [])`` for a trial restarted from its checkpoint)."""
        prompt, known = self._initial_prompt()
        prompt = prompt.detach().clone().float().to(self.model.device)
        self.timing = {"started_at": self.started, "setup_s": round(time.time() - self.started, 4), "compute_s": 0.0}
        start, screened = {}, []
        if self.restored is None:
            prompt, start, screened = _screen_start(self.config, self.cfg, self.model, prompt, known, self.evaluate,
                                                    len(self.val), self.right)
            self.start_right = start.get("right")
        self.prompt = torch.nn.Parameter(prompt)
        self.optimizer = make_optimizer(self.cfg["optimizer"], [self.prompt, *self.model.extra_parameters()],
                                        self._base_lr, float(self.cfg["weight_decay"]))
        if self.restored is not None and self.restored.get("optimizer"):
            self.optimizer.load_state_dict(self.restored["optimizer"])
            for group in self.optimizer.param_groups:  # the config's rate (PBT explores it), not the saved one
                group["lr"] = self._base_lr
        return start, screened

    def _initial_prompt(self) -> tuple[torch.Tensor, tuple[float, float] | None]:
        """The vectors to start from, and ``(loss, acc)`` of a saved score that may stand for their evaluation."""
        config, model, restored = self.config, self.model, self.restored
        if restored is not None:
            model.load_extra_state(restored["extra"])
            self.start_step, self.best = restored["step"], restored["best"]
            self.lowest_loss = restored.get("lowest_loss")
            self.evaluations = int(restored.get("evaluations", 0))
            self.rng.setstate(restored["rng"])
            if self.exploited_from is not None:  # its files keep its own evaluations from here on
                self.best, self.lowest_loss = None, None
                logger.info("trial %s starts at step %d from trial %s's checkpoint (exploit)", self.trial_id,
                            self.start_step, self.exploited_from)
            else:
                logger.info("trial %s restarts at step %d from its checkpoint", self.trial_id, self.start_step)
            return restored["prompt"], None
        if not config.get("resume_from"):
            return model.init_vectors(config.get("prompt_init") or ""), None
        try:
            saved = load_vectors(config["resume_from"], self.identity)
        except ValueError:
            # An elite whose file is unreachable (e.g. log_dir not shared by a cluster's nodes) still starts
            # from its projected text, which is what the searcher put in prompt_init.
            logger.exception("trial %s: cannot resume from %s; starting from its text", self.trial_id,
                             config["resume_from"])
            return model.init_vectors(config.get("prompt_init") or ""), None
        model.load_extra_state(saved.get("extra") or {})
        known = None
        if (config.get("reuse_start_score") and saved.get("val_key") == self.val_key
                and _finite(saved.get("val_acc")) and _finite(saved.get("loss"))):
            known = (float(saved["loss"]), float(saved["val_acc"]))
            flags = saved.get("val_right")
            self.right["known"] = list(flags) if isinstance(flags, list) and len(flags) == len(self.val) else None
        return saved["prompt"], known

    def step(self, step: int) -> float:
        """Gradient step ``step`` (1-based): a batch drawn with the phase's RNG, loss, backward, the learning
        rate of ``lr_at`` where the model has one, the optimizer's step; returns the batch loss."""
        if "first_step_s" not in self.timing:
            self.timing["first_step_s"] = round(time.time() - self.started, 4)
        t = time.perf_counter()
        train = self.train
        batch = [train[self.rng.randrange(len(train))] for _ in range(min(self.cfg["batch_size"], len(train)))]
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.loss(self.prompt, batch)
        loss.backward()
        if self._lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = float(self._lr_at(self._base_lr, step))
        self.optimizer.step()
        loss = float(loss.detach())
        self._compute(time.perf_counter() - t)
        return loss

    def run(self) -> dict:
        start, screened = self.prepare()
        if self.restored is None:
            # Candidates that lost the screening are evaluations too: one result each, before the phase's start.
            for i, (text, (loss, acc)) in enumerate(screened):
                self._send({**self._metrics(acc, loss, text, 0), "screen": True, "screen_index": i})
            self.evaluate_and_report(0, math.nan, scored=start["scored"], reused=start["reused"],
                                     start=start["label"], start_text=start["text"])
        elif self.exploited_from is not None:
            self.evaluate_and_report(self.start_step, math.nan, start="exploit", exploited_from=self.exploited_from)
        try:
            return self._descend()
        finally:
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    def _descend(self) -> dict:
        self.screen_arrivals(self.start_step)  # what arrived before the phase began, against its start
        steps, eval_every = self.cfg["steps"], self.cfg["eval_every"]
        running = []
        for step in range(self.start_step + 1, steps + 1):
            running.append(self.step(step))
            if step % eval_every == 0 or step == steps:
                last = step == steps and bool(self.config.get("project_best"))
                self.evaluate_and_report(step, sum(running) / len(running), project=last)
                running = []
                self.screen_arrivals(step)
        if self.mailbox and self.mailbox.get("drain"):
            self.drain(max(steps, self.start_step))
        return {**(self.best or {}), "vectors_path": self.vectors_path, "evaluations": self.evaluations}

    def _on_mentor_node(self) -> bool:
        """Whether this phase runs where the mentor computes (the driver's node; in-process: here)."""
        if not self.mailbox or not self.mailbox.get("mentor_threads"):
            return False
        node = self.mailbox.get("node_id")
        if node is None:
            return True
        try:
            import ray

            return ray.get_runtime_context().get_node_id() == node
        except Exception:
            return False

    def _lend_threads(self, asking: bool) -> None:
        """While a round is asked on this node, the phase computes with its threads less the mentor's (at least
        one): on a small machine a torch thread sharing a core with the mentor's stalls every parallel region of
        the step (``examples/PERFORMANCE.md``); back to its own when the round has ended."""
        want = self.threads
        if asking and self._mentor_node:
            want = max(1, self.threads - int(self.mailbox.get("mentor_threads") or 0))
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    def _read(self) -> tuple[list[dict], bool | None]:
        """The mailbox's messages past the cursor and whether it is closed (``None``: unreachable now)."""
        from ray_llm_search.mailbox import open_mailbox

        try:
            if self._reader is None:
                self._reader = open_mailbox(self.mailbox)
            messages, closed, asking = self._reader.read(self.mailbox["key"], self.cursor)
            self._lend_threads(bool(asking))
        except Exception as e:  # a driver restarting, a network fault: the phase goes on, and reads again later
            if not self._read_failed:
                logger.warning("trial %s: cannot read its candidates' mailbox (%s); it reads again later",
                               self.trial_id, e)
            self._read_failed += 1
            self._reader = None
            return [], None
        return [m for m in messages if isinstance(m, dict) and isinstance(m.get("text"), str)], bool(closed)

    def screen_arrivals(self, step: int) -> int:
        """Screen the candidates that arrived since the last read against the chain's vectors as they stand
        (their last evaluation, at ``step``); returns how many."""
        if not self.mailbox:
            return 0
        messages, _ = self._read()
        if not messages or self._last is None:  # (a phase restarted from its checkpoint has not evaluated yet)
            return 0
        self._screen_messages(step, messages)
        return len(messages)

    def _screen_messages(self, step: int, messages: list[dict]) -> None:
        own_loss, own_acc, own_right = self._last
        scored = []
        for m in messages:
            vectors = self.model.init_vectors(m["text"]).detach().float().to(self.prompt.device)
            if self.cfg["candidate_start"] == "mix":
                alpha = self.cfg["mix_alpha"]
                vectors = (1.0 - alpha) * self.prompt.detach() + alpha * vectors
            scored.append((m["text"], vectors, self.evaluate(vectors), self.right["last"]))
        self.cursor += len(messages)
        best_i = _choose(scored, (own_loss, own_acc), own_right, self.cfg, len(self.val))
        for i, (text, _, (loss, acc), _) in enumerate(scored):
            if i != best_i:
                self._send({**self._metrics(acc, loss, text, step), "screen": True,
                            "screen_index": self._screen_rows})
                self._screen_rows += 1
        if best_i is None:
            return
        text, vectors, score, flags = scored[best_i]
        logger.info("trial %s: candidate %r wins its screening at step %d; the chain goes on from it", self.trial_id,
                    text, step)
        with torch.no_grad():
            self.prompt.copy_(vectors)
        self.optimizer = make_optimizer(self.cfg["optimizer"], [self.prompt, *self.model.extra_parameters()],
                                        self._base_lr, float(self.cfg["weight_decay"]))
        self.evaluate_and_report(step, math.nan, scored=score, right=flags, start=f"candidate {best_i}",
                                 start_text=text, adopted=True)

    def drain(self, step: int) -> None:
        """After the last step: wait, sleeping, until the mailbox is closed, screening what arrives (every
        candidate owed to the chain is screened: the budget does not depend on when the mentor answers)."""
        limit = float(self.mailbox.get("wait_s") or 3600.0)
        began, screened = time.monotonic(), 0
        waited = 0.0
        while True:
            messages, closed = self._read()
            if messages and self._last is not None:
                self._screen_messages(step, messages)
                screened += len(messages)
                continue
            if closed:
                break
            if time.monotonic() - began > limit:
                logger.warning("trial %s: no word from the searcher's mailbox for %.0fs; ending without the "
                               "candidates still owed", self.trial_id, limit)
                break
            t = time.perf_counter()
            time.sleep(0.1)
            waited += time.perf_counter() - t
        self.timing["wait_s"] = round(waited, 4)
        if (waited > 0 or screened) and self._last_metrics is not None:  # the last result again, timed to now
            metrics = {**self._last_metrics, **self.timing, "evaluations": self.evaluations,
                       "mailbox_cursor": self.cursor, "elapsed_s": round(time.time() - self.started, 4)}
            self._send(metrics, checkpoint=self._checkpoint(step))

    def _metrics(self, val_acc: float, val_loss: float, text: str, step: int) -> dict:
        out = {"val_acc": val_acc, "loss": val_loss, "prompt_text": text, "step": step,
               "generation": self.config.get("generation", 0), "origin": self.config.get("origin", "seed"),
               "evaluations": self.evaluations, "torch_threads": torch.get_num_threads(), **self.timing,
               "elapsed_s": round(time.time() - self.started, 4)}
        if self.mailbox:
            out["mailbox_cursor"] = self.cursor
        return out

    def _checkpoint(self, step: int) -> dict | None:
        if not self.in_tune:
            return None
        return {"prompt": self.prompt.detach().cpu(), "extra": self.model.extra_state(), "step": step,
                "best": self.best, "rng": self.rng.getstate(), "optimizer": self.optimizer.state_dict(),
                "evaluations": self.evaluations, "lowest_loss": self.lowest_loss, "mailbox_cursor": self.cursor,
                "trial_id": self.trial_id}

    def evaluate_and_report(self, step: int, train_loss: float, scored: tuple[float, float] | None = None,
                            project: bool = False, right: list | None = None, **extra: Any) -> None:
        """Score the prompt (or take ``scored``, the start's known score, with ``right``, its per-example results
        where they are not the start's), keep its vectors where they are the best or lowest-loss so far, and report
        (with a restart checkpoint inside Tune)."""
        flags = (right if right is not None else self.start_right) if scored is not None else None
        if scored is None:
            scored = self.evaluate(self.prompt)
            flags = self.right["last"]
        val_loss, val_acc = scored
        self._last = (val_loss, val_acc, flags)
        text = self.model.project(self.prompt.detach())
        metrics = {**self._metrics(val_acc, val_loss, text, step), "train_loss": train_loss,
                   **self._keep(step, text, val_acc, val_loss, flags, exploit=extra.get("start") == "exploit"),
                   **extra}
        if project:
            # The best vectors' projection scored as text: reported before the final result, which stays the
            # trial's last (Tune's view of the phase is its vectors, not this text).
            shown = self.best["prompt_text"]
            p_loss, p_acc = self.evaluate(self.model.init_vectors(shown).detach().float().to(self.model.device))
            self._send({**self._metrics(p_acc, p_loss, shown, step), "screen": True, "projection": True})
            metrics["evaluations"] = self.evaluations
        self._last_metrics = metrics
        self._send(metrics, checkpoint=self._checkpoint(step))

    def _send(self, metrics: dict, checkpoint: dict | None = None) -> None:
        """Report ``metrics``, with ``checkpoint`` saved as the trial's restart checkpoint where given; the
        seconds it takes (the file, and inside Tune the report, which waits for Tune's driver to take it) add up
        in ``report_s``, which each result carries as it stood before that result was sent."""
        t = time.perf_counter()
        metrics = {**metrics, "report_s": round(self.timing.get("report_s", 0.0), 4)}
        try:
            if checkpoint is None:
                self.report(metrics, None)
                return
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(checkpoint, os.path.join(tmp, "phase.pt"))
                self.report(metrics, tmp)
        finally:
            self.timing["report_s"] = self.timing.get("report_s", 0.0) + time.perf_counter() - t

    def _keep(self, step: int, text: str, val_acc: float, val_loss: float, flags: list | None,
              exploit: bool = False) -> dict:
        """Save the vectors where this evaluation is the phase's best (what an elite resumes from), its lowest
        loss (``keep_lowest_loss``) or every one (``keep_all_vectors``); the metrics that say where."""
        best = self.best
        if best is None or val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["loss"]):
            self.best = {"val_acc": val_acc, "loss": val_loss, "step": step, "prompt_text": text}
            if self.vectors_path:
                self._save(self.vectors_path, text, val_acc, val_loss, step, prompt_init=self.config.get("prompt_init"),
                           **({"val_right": flags} if flags is not None else {}))
        if self.loss_path and _finite(val_loss) and (self.lowest_loss is None or val_loss < self.lowest_loss):
            self.lowest_loss = val_loss
            self._save(self.loss_path, text, val_acc, val_loss, step)
        out: dict = {"best_val_acc": self.best["val_acc"]}
        if self.loss_path and self.lowest_loss is not None:
            out["loss_vectors_path"] = self.loss_path
        if self.vectors_path:
            out["vectors_path"] = self.vectors_path
            if self.config.get("keep_all_vectors"):  # for studies of how the final prompt is chosen
                # an exploit's start is at a step this trial has evaluated before, from its own vectors
                every = join_location(self.vector_dir, f"{self.trial_id}.step{step}{'.exploit' if exploit else ''}.pt")
                self._save(every, text, val_acc, val_loss, step)
                out["step_vectors_path"] = every
        return out

    def _save(self, path: str, text: str, val_acc: float, val_loss: float, step: int, **meta: Any) -> None:
        save_vectors(path, self.prompt, self.model.extra_state(), self.identity, text=text, val_acc=val_acc,
                     loss=val_loss, val_key=self.val_key, step=step, **meta)


def time_units(config: dict, model, train: list, val: list, threads: int | None = None, steps: int = 16,
               evaluations: int = 6) -> dict:
    """Seconds of one gradient step and of one validation evaluation of a phase of ``config`` run here, with
    ``threads`` torch threads (default: as set), without Tune: each the mean of ``steps`` steps and of
    ``evaluations`` evaluations timed after an untimed warm-up of each (the start's evaluation, one step).
    Every trial's reported ``step`` and ``evaluations`` at these costs is the compute an ideal run is made of
    (``ray_llm_search.timeline.worker_timeline(compute_s=...)``); two whole phases timed once each would
    carry their one-off noise into it, and a phase's per-step cost does not depend on where it starts. It trains
    ``model``'s extra parameters (a linear head) as a phase would: time a model of its own."""
    if steps < 1 or evaluations < 1:
        raise ValueError(f"steps and evaluations must be >= 1, got {steps} and {evaluations}")
    config = {**config, "steps": steps + 1, "eval_every": steps + 1, "resume_from": None, "prompt_candidates": None}
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        phase = Phase(config, model, train, val, report=lambda metrics, checkpoint: None)
        phase.prepare()
        phase.step(1)
        t = time.perf_counter()
        for i in range(2, steps + 2):
            phase.step(i)
        step_s = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        for _ in range(evaluations):
            phase.evaluate(phase.prompt)
        return {"step_s": step_s, "eval_s": (time.perf_counter() - t) / evaluations}
    finally:
        torch.set_num_threads(before)


def _screen_start(config: dict, cfg: dict, model, prompt: torch.Tensor, known: tuple[float, float] | None,
                  evaluate: Callable, n_val: int, right: dict) -> tuple[torch.Tensor, dict, list]:
    """The phase's start: its own (``prompt``) or the best screened candidate that beats it on validation.

    ``screen_test="gain"``: the best candidate (accuracy, then loss) wins if it is better than the start (by
    more than ``screen_margin`` examples). ``"paired"``: a candidate wins only if it is right on enough more
    examples than the start, among those where the two disagree, to pass a one-sided sign test at level
    ``PAIRED_ALPHA / len(candidates)`` (normal approximation); the best passing one is taken. Two prompts
    share most of their right answers, so the paired test sees a real gain where the gain in accuracy alone
    is indistinguishable from the luck of the best of several draws.

    Returns the start vectors, a description of the start (its score, its per-example results where known,
    whether the score was reused, which candidate) and the ``(text, (loss, acc))`` of the candidates that
    lost, in the order given."""
    paired = cfg["screen_test"] == "paired"
    candidates = [c for c in (config.get("prompt_candidates") or []) if c.strip()]
    if paired and candidates and getattr(model, "evaluate_each", None) is None:
        raise ValueError("screen_test='paired' needs a model with evaluate_each(vectors, examples) -> (loss, acc, "
                         f"right per example); {type(model).__name__} has none")
    own, own_right = known, right.get("known")
    if own is None or (paired and candidates and own_right is None):  # a saved score without its per-example results
        own = evaluate(prompt)
        own_right, known = right["last"], None
    start = {"scored": own, "right": own_right, "reused": known is not None, "label": "own",
             "text": config.get("prompt_init") or ""}
    if not candidates:
        return prompt, start, []
    resumed = bool(config.get("resume_from"))
    scored = []
    for text in candidates:
        vectors = model.init_vectors(text).detach().float().to(prompt.device)
        if cfg["candidate_start"] == "mix" and resumed:
            alpha = cfg["mix_alpha"]
            vectors = (1.0 - alpha) * prompt + alpha * vectors
        score = evaluate(vectors)
        scored.append((text, vectors, score, right["last"]))
    best_i = _choose(scored, own, own_right, cfg, n_val)
    if best_i is not None:
        text, vectors, score, flags = scored[best_i]
        losers = [(t, s) for i, (t, _, s, _) in enumerate(scored) if i != best_i]
        return vectors, {"scored": score, "right": flags, "reused": False, "label": f"candidate {best_i}",
                         "text": text}, losers
    return prompt, start, [(t, s) for t, _, s, _ in scored]


def _choose(scored: list[tuple], own: tuple[float, float], own_right: list | None, cfg: dict, n_val: int) -> int | None:
    """Which of ``scored`` (``(text, vectors, (loss, acc), per-example results)``) takes the place of a start or a
    chain scored ``own`` (``(loss, acc)``, ``own_right``), or ``None``: the screening test of ``_screen_start``."""
    if not scored:
        return None
    need = cfg["screen_margin"] / max(1, n_val)
    order = sorted(range(len(scored)), key=lambda i: (-scored[i][2][1], scored[i][2][0], i))
    if cfg["screen_test"] == "paired":
        if own_right is None or any(s[3] is None for s in scored):
            raise ValueError("screen_test='paired' needs per-example results (a model with evaluate_each)")
        z = statistics.NormalDist().inv_cdf(1.0 - PAIRED_ALPHA / len(scored))
        winners = [i for i in order if scored[i][2][1] > own[1] + need + 1e-9
                   and _sign_test(scored[i][3], own_right, z)]
        return winners[0] if winners else None
    best_i = order[0]
    loss, acc = scored[best_i][2]
    wins = acc > own[1] + need + 1e-9 if need > 0 else acc > own[1] or (acc == own[1] and loss < own[0])
    return best_i if wins else None


def _sign_test(candidate: list[bool], start: list[bool], z: float) -> bool:
    """Whether ``candidate`` is right on significantly more of the examples where the two disagree."""
    gains = sum(c and not s for c, s in zip(candidate, start, strict=True))
    losses = sum(s and not c for c, s in zip(candidate, start, strict=True))
    return gains > losses and (gains - losses) >= z * math.sqrt(gains + losses)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def match_threads() -> int:
    """Give torch as many intra-op threads as the CPUs this Ray worker was assigned (a trial with
    ``{"cpu": 1}`` must not spread over every core of the node); returns the thread count."""
    try:
        import ray

        # never ray.get_runtime_context() without a Ray session: it would start one (a driver's tests, ...)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    except Exception:  # not in a Ray worker, or an older Ray
        cpus = None
    if cpus:
        threads = max(1, int(cpus))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def vector_location(vector_dir: str | None, in_tune: bool) -> str | None:
    """Where a phase keeps its vectors files: ``vector_dir`` (the config's), except inside Tune when Tune's
    storage (``storage_path``) is not the local filesystem (``s3://``, ``gs://``, any pyarrow filesystem) and
    ``vector_dir`` is a local path: a node-local folder the next generation's elites may not see (a cluster
    without a shared disk), so the files go to ``vectors/`` in this trial's folder of Tune's storage instead,
    which every node reaches. A ``vector_dir`` that is itself a URI is kept; without one nothing is saved."""
    if not in_tune or not vector_dir or is_uri(vector_dir):
        return vector_dir
    remote = _tune_storage_folder()
    return join_location(remote, "vectors") if remote is not None else vector_dir


def _tune_storage_folder() -> str | None:
    """This trial's folder in Tune's storage as a URI, or ``None`` where that storage is the local filesystem
    (a single machine or a shared mount: ``vector_dir`` is used as given) or cannot be known."""
    try:
        import pyarrow.fs
        from ray import tune

        storage = tune.get_context().get_storage()  # Ray's DeveloperAPI: the StorageContext of this trial
        fs, folder = storage.storage_filesystem, storage.trial_fs_path
    except Exception:  # an older or newer Ray without it: keep vector_dir
        logger.warning("cannot find this trial's folder in Tune's storage; vectors go to the config's vector_dir",
                       exc_info=True)
        return None
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return None
    return filesystem_uri(fs, folder)


def _tune_report(metrics: dict, checkpoint_dir: str | None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def _trial_id() -> str:
    from ray import tune

    return tune.get_context().get_trial_id()


def _restart_state() -> dict | None:
    """State of this trial's last checkpoint when Tune restarts it after a failure (max_failures)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, "phase.pt"), map_location="cpu", weights_only=False)
