"""Evaluated prompts and their trajectories: plain data, ranking and de-duplication.

Everything here pickles and holds no model, no tensor and no secret, so the searcher's state stays small
and portable across ``Searcher.save``/``restore``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

Origin = Literal["seed", "llm", "elite", "pool"]
Status = Literal["running", "finished", "error"]

_SPACE = re.compile(r"\s+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def normalize(text: str) -> str:
    """Key under which two prompts count as the same: case, spacing and edge punctuation are ignored."""
    return _EDGE.sub("", _SPACE.sub(" ", text.strip().lower()))


@dataclass
class Evaluation:
    """One evaluation reported by a gradient phase (the DESIGN's reported keys)."""

    step: int
    text: str
    loss: float
    metric: float


@dataclass
class Trajectory:
    """Everything one trial (one gradient phase) reported, plus where it started from."""

    trial_id: str
    generation: int
    origin: Origin
    prompt_init: str
    resume_from: str | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    status: Status = "running"
    vectors_path: str | None = None
    lineage: str = ""  # the trial whose vectors this phase continues (its own id unless it is an elite)

    def best(self, mode: str) -> Evaluation | None:
        """The evaluation with the best metric (ties: lower loss, then the earlier step)."""
        usable = [e for e in self.evaluations if not math.isnan(e.metric)]
        if not usable:
            return None
        sign = 1.0 if mode == "max" else -1.0
        return max(usable, key=lambda e: (sign * e.metric, -e.loss, -e.step))


class PromptPool:
    """All trajectories of a search, ranked by their best evaluation.

    Args:
        mode: ``"max"`` or ``"min"``, how the searcher's metric is ranked.
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.mode = mode
        self.trajectories: dict[str, Trajectory] = {}
        self._seen: set[str] = set()  # every start and every projection
        self._started: set[str] = set()  # texts some phase already started from

    def __len__(self) -> int:
        return len(self.trajectories)

    def add(self, trajectory: Trajectory) -> None:
        self.trajectories[trajectory.trial_id] = trajectory
        self.mark_seen(trajectory.prompt_init)
        self._started.add(normalize(trajectory.prompt_init))

    def record(self, trial_id: str, evaluation: Evaluation) -> None:
        trajectory = self.trajectories[trial_id]
        # Tune may hand the last result twice (on_trial_result, then on_trial_complete).
        if trajectory.evaluations and _same(trajectory.evaluations[-1], evaluation):
            return
        trajectory.evaluations.append(evaluation)
        self.mark_seen(evaluation.text)

    def mark_seen(self, text: str) -> None:
        key = normalize(text)
        if key:
            self._seen.add(key)

    def is_new(self, text: str) -> bool:
        key = normalize(text)
        return bool(key) and key not in self._seen

    def score(self, trajectory: Trajectory) -> float | None:
        best = trajectory.best(self.mode)
        return None if best is None else best.metric

    def ranked(self, generation: int | None = None) -> list[Trajectory]:
        """Trajectories with at least one evaluation, best first; ``generation`` keeps only that one."""
        sign = -1.0 if self.mode == "max" else 1.0
        keyed = []
        for t in self.trajectories.values():
            if generation is not None and t.generation != generation:
                continue
            best = t.best(self.mode)
            if best is not None:
                keyed.append(((sign * best.metric, best.loss), len(keyed), t))
        return [t for _, _, t in sorted(keyed)]

    def best(self) -> Trajectory | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def fill_texts(self, exclude: set[str] = frozenset()) -> list[str]:
        """Texts to top a generation up with when the LLM gives too few: the best projections of the
        best trajectories first (the doer's own proposals) that no phase has started from yet."""
        texts: list[str] = []
        keys = self._started | {normalize(t) for t in exclude}
        for trajectory in self.ranked():
            by_metric = sorted(
                (e for e in trajectory.evaluations if not math.isnan(e.metric)),
                key=lambda e: (-e.metric if self.mode == "max" else e.metric, e.loss),
            )
            for evaluation in by_metric:
                key = normalize(evaluation.text)
                if key and key not in keys:
                    keys.add(key)
                    texts.append(evaluation.text)
        return texts


def _same(a: Evaluation, b: Evaluation) -> bool:
    """Equal evaluations, where a NaN loss or metric equals a NaN (a diverged phase reports NaN)."""

    def eq(x: float, y: float) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return a.step == b.step and a.text == b.text and eq(a.loss, b.loss) and eq(a.metric, b.metric)
