"""The shared gradient phase: start from text, an elite's vectors or a restart checkpoint; take K steps;
evaluate every k; report the contract keys; keep the final and best vectors.

A ``PromptModel`` (text soft prompts, CLIP CoOp, your own) supplies the model-specific parts:

- ``init_vectors(text) -> Tensor[L, D]`` and ``project(vectors) -> str``
- ``loss(vectors, batch) -> scalar Tensor`` on training examples
- ``evaluate(vectors, examples) -> (loss, accuracy)``
- ``extra_parameters() -> list[Parameter]`` also trained (e.g. a linear head), with
  ``extra_state()`` / ``load_extra_state(state)``
- ``identity() -> dict`` that vectors must match to be loaded (model name, shape)
- optional ``lr_at(base_lr, step) -> float``: the learning rate of optimizer step ``step`` (1-based) for a
  schedule (CoOp's warm-up + cosine); without it the rate stays ``lr``. It is a function of the step alone, so
  a trial restarted from its checkpoint continues the schedule where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

PHASE_DEFAULTS = {
    "steps": 30,
    "eval_every": 10,
    "batch_size": 16,
    "lr": 0.05,
    "optimizer": "adamw",
    "weight_decay": 0.0,
}
VECTORS_FORMAT = 1


def _in_tune() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        return _in_tune_session()
    except ImportError:
        return False


def load_vectors(path: str, identity: dict) -> dict:
    """A saved vectors file, checked against the model it is loaded into."""
    if not os.path.isfile(path):
        raise ValueError(f"prompt vectors file not found: {path!r}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"format": VECTORS_FORMAT, "prompt": prompt.detach().cpu().clone(), "extra": extra,
                "identity": identity, **meta}, tmp)
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
    return {**cfg, "steps": steps, "eval_every": eval_every, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay}


def _make_optimizer(name: str, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def run_phase(config: dict, model, train: list, val: list,
              report: Callable[[dict, str | None], None] | None = None) -> dict:
    """Run one gradient phase and return its best evaluation.

    Args:
        config: the trial config (DESIGN contract keys plus ``steps``, ``eval_every``, ``batch_size``,
            ``lr``, ``optimizer``).
        model: a ``PromptModel`` (see module docstring).
        train, val: examples; the phase never sees a test split.
        report: ``report(metrics, checkpoint_dir)``; default ``ray.tune.report`` inside Tune, else nothing.
    """
    cfg = check_config(config)
    steps, eval_every, batch_size = cfg["steps"], cfg["eval_every"], cfg["batch_size"]
    if not train or not val:
        raise ValueError(f"a phase needs training and validation examples; got {len(train)} and {len(val)}")
    in_tune = _in_tune()
    if report is None:
        report = _tune_report if in_tune else (lambda metrics, ckpt: None)
    trial_id = config.get("trial_id") or (_trial_id() if in_tune else "local")
    seed = int(config.get("phase_seed", 0))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    identity = model.identity()
    vector_dir = config.get("vector_dir")
    vectors_path = os.path.join(vector_dir, f"{trial_id}.pt") if vector_dir else None

    start_step, best, restored = 0, None, _restart_state() if in_tune else None
    if restored is not None:
        prompt = restored["prompt"]
        model.load_extra_state(restored["extra"])
        start_step, best = restored["step"], restored["best"]
        rng.setstate(restored["rng"])
        logger.info("trial %s restarts at step %d from its checkpoint", trial_id, start_step)
    elif config.get("resume_from"):
        try:
            saved = load_vectors(config["resume_from"], identity)
            prompt = saved["prompt"]
            model.load_extra_state(saved.get("extra") or {})
        except ValueError:
            # An elite whose file is unreachable (e.g. log_dir not shared by a cluster's nodes) still starts
            # from its projected text, which is what the searcher put in prompt_init.
            logger.exception("trial %s: cannot resume from %s; starting from its text", trial_id, config["resume_from"])
            prompt = model.init_vectors(config.get("prompt_init") or "")
    else:
        prompt = model.init_vectors(config.get("prompt_init") or "")
    prompt = torch.nn.Parameter(prompt.detach().clone().float().to(model.device))
    optimizer = _make_optimizer(cfg["optimizer"], [prompt, *model.extra_parameters()], float(cfg["lr"]),
                                float(cfg["weight_decay"]))
    if restored is not None and restored.get("optimizer"):
        optimizer.load_state_dict(restored["optimizer"])

    lr_at = getattr(model, "lr_at", None)
    base_lr = float(cfg["lr"])

    def evaluate_and_report(step: int, train_loss: float) -> None:
        nonlocal best
        val_loss, val_acc = model.evaluate(prompt.detach(), val)
        text = model.project(prompt.detach())
        improved = best is None or val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["loss"])
        if improved:
            best = {"val_acc": val_acc, "loss": val_loss, "step": step, "prompt_text": text}
            if vectors_path:
                save_vectors(vectors_path, prompt, model.extra_state(), identity, text=text, val_acc=val_acc,
                             step=step, prompt_init=config.get("prompt_init"))
        metrics = {
            "val_acc": val_acc,
            "loss": val_loss,
            "train_loss": train_loss,
            "prompt_text": text,
            "step": step,
            "best_val_acc": best["val_acc"],
            "generation": config.get("generation", 0),
            "origin": config.get("origin", "seed"),
        }
        if vectors_path:
            metrics["vectors_path"] = vectors_path
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if in_tune:
                torch.save({"prompt": prompt.detach().cpu(), "extra": model.extra_state(), "step": step, "best": best,
                            "rng": rng.getstate(), "optimizer": optimizer.state_dict()}, os.path.join(tmp, "phase.pt"))
                ckpt = tmp
            report(metrics, ckpt)

    if restored is None:
        evaluate_and_report(0, math.nan)
    running = []
    for step in range(start_step + 1, steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(min(batch_size, len(train)))]
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(prompt, batch)
        loss.backward()
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(lr_at(base_lr, step))
        optimizer.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            evaluate_and_report(step, sum(running) / len(running))
            running = []
    return {**(best or {}), "vectors_path": vectors_path}


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
