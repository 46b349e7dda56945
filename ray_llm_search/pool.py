"""Evaluated prompts and their trajectories: plain data, ranking and de-duplication.

Everything here pickles and holds no model, no tensor and no secret, so the searcher's state stays small
and portable across ``Searcher.save``/``restore``.
"""

from __future__ import annotations

import math
import random
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
    """One evaluation reported by a gradient phase (``ray_llm_search.contract.REPORTED_KEYS``)."""

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
    loss_vectors_path: str | None = None  # the vectors of its lowest validation loss, where the phase keeps them
    lineage: str = ""  # the trial whose vectors this phase continues (its own id unless it is an elite)
    candidates: list[str] = field(default_factory=list)  # texts screened at the phase's start
    adopted: str | None = None  # the screened candidate the phase started from, if one beat its own start
    hyperparameters: dict = field(default_factory=dict)  # values sampled from the config's Tune domains

    def best(self, mode: str) -> Evaluation | None:
        """The evaluation with the best finite metric (ties: lower loss, a non-finite loss last, then the
        earlier step). NaN and infinite metrics are kept in ``evaluations`` but never best: a trajectory with
        no finite metric has no best, so it is never ranked, an elite, shown to the LLM or a fill-in."""
        usable = [e for e in self.evaluations if math.isfinite(e.metric)]
        if not usable:
            return None
        sign = 1.0 if mode == "max" else -1.0
        return max(usable, key=lambda e: (sign * e.metric, -loss_key(e.loss), -e.step))



@dataclass(frozen=True)
class Descent:
    """What gradient descent did to a start: ``start`` (its text and its score as text, step 0), ``end`` (the
    last evaluation of the chain it started: the tuned vectors' scores, ``text`` their nearest words) and the
    chain's ``steps`` of descent in all."""

    start: Evaluation
    end: Evaluation
    steps: int

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

    def record(self, trial_id: str, evaluation: Evaluation) -> bool:
        """Append an evaluation; False if it repeats the last one (Tune may hand the last result twice:
        on_trial_result, then on_trial_complete)."""
        trajectory = self.trajectories[trial_id]
        if trajectory.evaluations and _same(trajectory.evaluations[-1], evaluation):
            return False
        trajectory.evaluations.append(evaluation)
        self.mark_seen(evaluation.text)
        return True

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
                keyed.append(((sign * best.metric, loss_key(best.loss)), len(keyed), t))
        return [t for _, _, t in sorted(keyed)]

    def best(self) -> Trajectory | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def chosen(self, select: str) -> tuple[Trajectory, Evaluation] | None:
        """The final prompt's evaluation under ``select`` (``selection_key``) with its trajectory, among the
        evaluations of finite metric (and, by ``"loss"``, finite loss); None if there is none. Earlier, on a tie:
        by ``"metric"`` the trajectory suggested first, then the earlier step (the best trajectory's best, as
        ``ranked`` and ``Trajectory.best`` order them); by ``"loss"`` the earlier generation and step."""
        keyed = []
        for i, t in enumerate(self.trajectories.values()):
            for e in t.evaluations:
                if not math.isfinite(e.metric) or (select == "loss" and not math.isfinite(e.loss)):
                    continue
                order = (t.generation, e.step, i) if select == "loss" else (i, e.step)
                keyed.append((selection_key(select, e.metric, e.loss, order, self.mode), t, e))
        if not keyed:
            return None
        _, t, e = min(keyed, key=lambda k: k[0])
        return t, e

    def fill_texts(self, exclude: set[str] = frozenset()) -> list[str]:
        """Texts to top a generation up with when the LLM gives too few: the best projections of the
        best trajectories first (the doer's own proposals) that no phase has started from yet."""
        texts: list[str] = []
        keys = self._started | {normalize(t) for t in exclude}
        for trajectory in self.ranked():
            by_metric = sorted(
                (e for e in trajectory.evaluations if math.isfinite(e.metric)),
                key=lambda e: (-e.metric if self.mode == "max" else e.metric, loss_key(e.loss)),
            )
            for evaluation in by_metric:
                key = normalize(evaluation.text)
                if key and key not in keys:
                    keys.add(key)
                    texts.append(evaluation.text)
        return texts


def selection_key(select: str, metric: float, loss: float, order: tuple = (), mode: str = "max") -> tuple:
    """How the final prompt is chosen (``LLMSearch(select=...)``, ``best()``; the comparison's arms choose by the
    same key, ``compare.select_best``), smallest first. ``"loss"``: the lowest loss, then the better metric, then
    ``order`` (the caller's "earlier"); any other ``select`` (``"metric"``, the comparison's ``"acc"``): the better
    metric, then the lower loss (a non-finite loss after every finite one, ``loss_key``), then ``order``."""
    sign = -1.0 if mode == "max" else 1.0
    if select == "loss":
        return (loss, sign * metric, *order)
    return (sign * metric, loss_key(loss), *order)


def loss_key(loss: float) -> float:
    """A loss for tie-breaking: lower is better, and NaN or infinite ranks after every finite loss."""
    return loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf


_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


def perturb(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A small random edit of ``text`` (no LLM): drop, swap, insert or replace one or two words, the new
    words drawn from ``vocabulary`` (e.g. the words of the seed prompts and the task description)."""
    words = text.split()
    if not words and vocabulary:
        words = [rng.choice(vocabulary)]
    for _ in range(rng.choice((1, 2))):
        op = rng.choice(("drop", "swap", "insert", "replace") if vocabulary else ("drop", "swap"))
        if op == "drop" and len(words) > 2:
            words.pop(rng.randrange(len(words)))
        elif op == "swap" and len(words) > 1:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == "insert" and vocabulary:
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
        elif op == "replace" and vocabulary and words:
            words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


def vocabulary_of(texts: list[str]) -> list[str]:
    """The distinct lower-case words of ``texts``, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in _WORD.findall(text.lower()):
            seen.setdefault(word, None)
    return list(seen)


def text_scores(pool: PromptPool, screened: dict[int, list[dict]], candidate_start: str) -> list[Evaluation]:
    """Every text evaluated as text so far, best first, each once (its first evaluation): the step-0
    evaluation of each phase that started from text (a seed, a new start, an adopted text candidate), and
    every screened candidate and projection (``screened``: per generation, the searcher's rows of candidates
    that lost). Non-finite scores are left out."""
    found: list[Evaluation] = []
    for trajectory in pool.trajectories.values():
        first = trajectory.evaluations[0] if trajectory.evaluations else None
        if first is None or first.step != 0:
            continue
        if trajectory.adopted and candidate_start == "text":
            found.append(Evaluation(0, trajectory.adopted, first.loss, first.metric))
        elif not trajectory.resume_from and not trajectory.adopted:
            found.append(Evaluation(0, trajectory.prompt_init, first.loss, first.metric))
    for entries in screened.values():
        found += [Evaluation(0, entry["text"], entry["loss"], entry["metric"]) for entry in entries]
    unique: dict[str, Evaluation] = {}
    for e in found:
        key = normalize(e.text)
        if key and key not in unique and math.isfinite(e.metric):
            unique[key] = e
    return sorted(unique.values(), key=lambda e: _rank_key(pool.mode, e))


def descents(pool: PromptPool) -> list[Descent]:
    """What descent did to each start from text, best first by the score its chain reached (ties: lower loss):
    per lineage whose first phase started from text, that text with its step-0 score, the chain's last
    finite evaluation and its steps in all. Chains that have not stepped yet are left out."""
    lineages: dict[str, list[Trajectory]] = {}
    for trajectory in pool.trajectories.values():
        lineages.setdefault(trajectory.lineage, []).append(trajectory)
    found = []
    for phases in lineages.values():
        phases.sort(key=lambda t: t.generation)
        first = phases[0]
        if first.resume_from or not first.evaluations or first.evaluations[0].step != 0:
            continue
        scored = [(t, [e for e in t.evaluations if math.isfinite(e.metric)]) for t in phases]
        steps = sum(max(e.step for e in t.evaluations) for t in phases if t.evaluations)
        ends = [evals[-1] for _, evals in scored if evals]
        if steps <= 0 or not ends:
            continue
        start = first.evaluations[0]
        found.append(Descent(Evaluation(0, first.adopted or first.prompt_init, start.loss, start.metric),
                             ends[-1], steps))
    return sorted(found, key=lambda d: _rank_key(pool.mode, d.end))


def _rank_key(mode: str | None, e: Evaluation) -> tuple[float, float]:
    return (-1.0 if mode != "min" else 1.0) * e.metric, loss_key(e.loss)


def perturbed(pool: PromptPool, n: int, rng: random.Random, seed_texts: list[str], vocabulary: list[str],
              max_words: int, exclude: set[str]) -> list[str]:
    """``n`` new texts made by random word edits (``perturb``) of the best start texts, best first (``seed_texts``
    where no phase has run), at most ``max_words`` words, none in ``exclude`` (normalized) or already seen."""
    if n <= 0:
        return []
    bases = []
    for trajectory in pool.ranked():
        text = trajectory.adopted or trajectory.prompt_init
        if text and text not in bases:
            bases.append(text)
    bases = bases or list(seed_texts)
    out: list[str] = []
    keys = set(exclude)
    for i in range(50 * n):
        if len(out) >= n:
            break
        text = perturb(bases[i % len(bases)], rng, vocabulary)
        key = normalize(text)
        if key and key not in keys and pool.is_new(text) and len(text.split()) <= max_words:
            keys.add(key)
            out.append(text)
    while len(out) < n:  # tiny vocabularies: repeats are still screened (a repeat costs what a new one does)
        out.append(bases[len(out) % len(bases)])
    return out


def fill(pool: PromptPool, n: int, exclude: set[str], seed_prompts: list[str]) -> list[str]:
    """Top-up when the LLM gives too few: unstarted projections of the best phases, then unused seeds,
    then the best texts again (a phase from a repeated text still differs by its seed)."""
    if n <= 0:
        return []
    texts = pool.fill_texts(exclude)
    texts += [s for s in seed_prompts if pool.is_new(s) and normalize(s) not in exclude]
    ranked = [t.best(pool.mode).text or t.prompt_init for t in pool.ranked()] or list(seed_prompts)
    while len(texts) < n:
        texts.append(ranked[len(texts) % len(ranked)])
    return texts[:n]


def _same(a: Evaluation, b: Evaluation) -> bool:
    """Equal evaluations, where a NaN loss or metric equals a NaN (a diverged phase reports NaN)."""

    def eq(x: float, y: float) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return a.step == b.step and a.text == b.text and eq(a.loss, b.loss) and eq(a.metric, b.metric)
