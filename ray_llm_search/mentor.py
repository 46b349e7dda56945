"""The mentor: turns trajectories into a meta-prompt, and an LLM's reply into validated candidates.

Two meta-prompt styles:

- ``"chat"`` for instruction-following models (GPT-4, Llama-3-Instruct via vLLM, ...): the task, the top
  trajectories ordered worst to best (each projected prompt with its loss and metric along the gradient
  phase), and a request for N new prompts under W words, one per line.
- ``"completion"`` for small local models (SmolLM2-135M): an OPRO-style scored list that ends on an open
  ``prompt:`` line, so that each sampled continuation is one candidate.

LLM output is data: it is length- and character-limited here and never evaluated.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ray_llm_search.pool import Descent, Evaluation, Trajectory, normalize  # noqa: F401  Descent: its old home

STYLES = ("chat", "completion")

# List markers a model may put before a prompt: "1.", "2)", "(3)", "-", "*", "•", "### ", "Prompt 4:", and
# a JSON key ('"prompt": '). A number is a marker only when a space or quote follows ("1.5x" stays whole).
_PREFIX = re.compile(
    r"^\s*(?:(?:[-*•>]+|#+(?:\d{1,3}\b)?|\(?\d{1,3}[.):\]](?=[\s\"'“‘«]|$)|\(\d{1,3}\)|[a-hA-H][.)](?=\s)|"
    r"(?:new\s+)?(?:prompt|instruction|candidate)\s*#?\d*\s*[:.\-]|[\"'][\w \-]{1,40}[\"']\s*:)\s*)+",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»"
# A JSON array item's trailing comma after its closing quote: '"a prompt",'.
_ITEM_COMMA = re.compile(r"([\"'”’»])\s*,$")
# What is left of markup: a code fence, or a line that opens or closes a JSON object or array.
_MARKUP = re.compile(r"^(?:```|[\[{])|[\[{]$")
# Scores a model copies from the meta-prompt after a prompt: "(score 0.8)", "loss 0.621, val_acc 0.598".
_SCORE_SUFFIX = re.compile(r"(?:\s*[,;]?\s*[\(\[]?\s*(?:score|accuracy|acc|loss|val_\w+)\s*[:=]?\s*[-\d.]+%?\s*[\)\]]?)+"
                           r"\s*[,;.]?\s*$", re.IGNORECASE)
# A length a model notes after a prompt when told how long prompts may be: '... question?" (8 tokens)'.
_COUNT_SUFFIX = re.compile(r"\s*[\(\[]\s*~?\d+\s*(?:tokens?|words?)\s*[\)\]]\s*[,;.]?\s*$", re.IGNORECASE)
# The descent meta-prompt's line format copied after a prompt (``build_descent``): '"x" as written: loss 1.5, ...;
# after 8 steps of descent: ..., nearest words "..."'. Only after a closing quote, so a prompt's own words stay.
_DESCENT_SUFFIX = re.compile(r"(?<=[\"'”’»])\s*[,;:]?\s*as written\s*:.*$", re.IGNORECASE)
# Lines that talk about prompts instead of being one.
_CHATTER = re.compile(
    r"^(?:here\s+(?:are|is)|sure|certainly|of course|okay|ok\b|i\s|i'm|as an ai|note\b|these\s|the following|"
    r"below|new prompts?\b|prompts?\s*:|task\s*:|step\s+\d+\b|trajectory\s+\d+|"
    # advice to the prompt writer rather than a prompt
    r"try\s|you\s+(?:should|could|can|might|may|need)\b|consider\s|make\s+sure|remember\b|avoid\s|"
    r"maybe\s|perhaps\s|it\s+(?:is|would\s+be)\s+(?:better|best|helpful)|instead\b|use\s+(?:shorter|longer|more|fewer)\b)",
    re.IGNORECASE,
)


@dataclass
class Parsed:
    """Outcome of parsing one LLM round: accepted candidates in the LLM's order, and why others were dropped."""

    candidates: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Mentor:
    """Builds meta-prompts and validates replies.

    Args:
        task_description: one or two sentences on what the prompt is for.
        metric: name of the metric shown to the LLM (e.g. ``"val_acc"``).
        mode: ``"max"`` or ``"min"``.
        max_words: a candidate with more words is rejected.
        max_chars: a candidate with more characters is rejected.
        points_per_trajectory: evaluations shown per trajectory (first, best and last are kept).
        prompt_tokens: how many tokens of a prompt the trainable keeps (its ``prompt_length``), or ``None``. When
            set, the chat meta-prompt says so (a longer text is cut, a shorter one repeated) and asks for prompts
            of about that many words: without it the 1.5B mentor wrote prompts past the 8 tokens a text-prompt
            phase keeps (``examples/RESULTS.md``).

    Example:
        >>> m = Mentor("Classify news by topic.", "val_acc", "max")
        >>> m.parse(["1. topic of this article", "Sure! Here are prompts:"], n=3).candidates
        ['topic of this article']
    """

    task_description: str
    metric: str
    mode: str = "max"
    max_words: int = 16
    max_chars: int = 200
    points_per_trajectory: int = 4
    prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {self.max_words}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        if self.points_per_trajectory < 1:
            raise ValueError(f"points_per_trajectory must be >= 1, got {self.points_per_trajectory}")
        if self.prompt_tokens is not None and (isinstance(self.prompt_tokens, bool)
                                               or not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 1):
            raise ValueError(f"prompt_tokens must be None or an integer >= 1, got {self.prompt_tokens!r}")

    # -- building ---------------------------------------------------------------------------------------

    def build(self, trajectories: list[Trajectory], n: int, style: str = "chat") -> str:
        """Meta-prompt asking for ``n`` prompts; ``trajectories`` are given best first and shown worst first.

        A trajectory without a usable (non-NaN) evaluation has nothing to show and is left out.
        """
        self._check(n, style)
        shown = [t for t in reversed(trajectories) if t.best(self.mode) is not None]
        if style == "completion":
            return self._completion(self._completion_entries(shown))
        lines = self._chat_head(
            "Each prompt below was the starting point of a gradient-descent phase that tuned it as continuous "
            "vectors. At each evaluation the vectors were mapped back to their nearest words, giving the "
            f"text shown with its {self._score_names()}. "
            "Trajectories are ordered from worst to best.")
        for i, trajectory in enumerate(shown, 1):
            best = trajectory.best(self.mode)
            lines.append(f"Trajectory {i} (best {self.metric} {best.metric:.3f}), started from "
                         f"\"{_clip(trajectory.prompt_init)}\":")
            for e in self._points(trajectory):
                lines.append(f"  step {e.step}: \"{_clip(e.text)}\" {self._scores(e)}")
            lines.append("")
        return "\n".join(lines + self._chat_request(n))

    def build_scored(self, evaluated: list, n: int, style: str = "chat") -> str:
        """Meta-prompt asking for ``n`` prompts from texts scored *as text* (``Evaluation``s with ``text``,
        ``loss`` and ``metric``), given best first and shown worst first (best last, as OPRO does)."""
        self._check(n, style)
        shown = [e for e in reversed(evaluated) if math.isfinite(e.metric)]
        if style == "completion":
            return self._completion([(e.metric, _clip(e.text)) for e in shown])
        lines = self._chat_head(f"Each prompt below was evaluated as it is written, with its "
                                f"{self._score_names()}. They are ordered from worst to best.")
        lines += [f"\"{_clip(e.text)}\" {self._scores(e)}" for e in shown] + [""]
        return "\n".join(lines + self._chat_request(n))

    def build_descent(self, descents: list[Descent], n: int, style: str = "chat") -> str:
        """Meta-prompt asking for ``n`` prompts from what descent did to each start (``Descent``s, given best
        first and shown worst first): the start text with its score as text, then the score its tuned vectors
        reached after ``steps`` steps of gradient descent and their nearest words. ``"completion"`` lists the
        start texts with the score their descent reached (a start is worth what it descends to)."""
        self._check(n, style)
        shown = [d for d in reversed(descents) if math.isfinite(d.end.metric)]
        if style == "completion":
            return self._completion([(d.end.metric, _clip(d.start.text)) for d in shown])
        lines = self._chat_head(
            "Each prompt below was evaluated as it is written, then used as the starting point of a gradient-descent "
            "phase that tuned it as continuous vectors. For each: its "
            f"{self._score_names()} as written; the scores its tuned vectors reached after the steps of descent "
            "shown; and the words nearest to those tuned vectors, which show where descent moved it (the words "
            "themselves may read as noise). What matters is the score after descent: a prompt is worth the "
            "starting point it gives. They are ordered from worst to best after descent.")
        for d in shown:
            written = self._scores(d.start) if math.isfinite(d.start.metric) else "not scored"
            lines.append(f"\"{_clip(d.start.text)}\" as written: {written}; after {d.steps} steps of descent: "
                         f"{self._scores(d.end)}, nearest words \"{_clip(d.end.text)}\"")
        return "\n".join(lines + [""] + self._chat_request(n))

    @staticmethod
    def _check(n, style: str) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")

    def _score_names(self) -> str:
        """``validation loss and val_acc (higher is better)``."""
        better = "higher is better" if self.mode == "max" else "lower is better"
        scores = self.metric if self.metric == "loss" else f"validation loss and {self.metric}"
        return f"{scores} ({better})"

    def _chat_head(self, what: str) -> list[str]:
        return ["You are an expert at writing prompts for a classifier.", f"Task: {self.task_description.strip()}",
                "", what, ""]

    def _chat_request(self, n: int) -> list[str]:
        words = self.max_words
        length = []
        if self.prompt_tokens is not None:
            # about 3 words in 4 tokens for English under a WordPiece or BPE vocabulary
            words = max(1, min(self.max_words, (3 * self.prompt_tokens) // 4))
            length = [f"The classifier keeps exactly {self.prompt_tokens} tokens of a prompt: a longer prompt is cut "
                      f"after them and a shorter one is repeated until it fills them, so every word counts."]
        return length + [
            f"Write {n} new prompts for this task that you expect to score better than all of the above. "
            "Learn from which words helped. Each must differ from every prompt above and have at most "
            f"{words} words.",
            f"Reply with the {n} prompts only, one per line, numbered 1 to {n}, without any other text.",
        ]

    def _completion_entries(self, shown: list[Trajectory]) -> list[tuple[float, str]]:
        """Each trajectory's start and points as (metric, clipped text), each text once, sorted best last."""
        entries: list[tuple[float, str]] = []
        seen: set[str] = set()
        for trajectory in shown:
            for text, metric in [(trajectory.prompt_init, None)] + [(e.text, e.metric) for e in self._points(trajectory)]:
                if metric is None:
                    first = trajectory.evaluations[0] if trajectory.evaluations else None
                    if first is None:
                        continue
                    metric = first.metric
                key = normalize(text)
                if key and key not in seen and math.isfinite(metric):
                    seen.add(key)
                    entries.append((metric, _clip(text)))
        entries.sort(key=lambda x: x[0] if self.mode == "max" else -x[0])
        return entries

    def _completion(self, entries: list[tuple[float, str]]) -> str:
        """The OPRO-style scored list of (metric, text), given best last, the last 12 shown, ending on an open
        ``prompt:`` line."""
        lines = [f"{self.task_description.strip()}", f"Prompts for this task, sorted by {self.metric} "
                 f"({'best' if self.mode == 'max' else 'lowest'} last):", ""]
        for metric, text in entries[-12:]:
            lines += [f"prompt: {text}", f"{self.metric}: {metric:.2f}", ""]
        lines.append("prompt:")
        return "\n".join(lines)

    def _scores(self, e) -> str:
        """``loss 0.412, val_acc 0.750``: the metric once when it is the loss, a non-finite loss left out."""
        if self.metric == "loss" or not math.isfinite(e.loss):
            return f"{self.metric} {e.metric:.3f}"
        return f"loss {e.loss:.3f}, {self.metric} {e.metric:.3f}"

    def _points(self, trajectory: Trajectory) -> list:
        """Up to ``points_per_trajectory`` evaluations with a finite metric: first, best and last kept."""
        evals = [e for e in trajectory.evaluations if math.isfinite(e.metric)]
        k = self.points_per_trajectory
        if len(evals) <= k:
            return list(evals)
        best = trajectory.best(self.mode)
        keep = {0, len(evals) - 1, evals.index(best)}
        stride = max(1, (len(evals) - 1) // max(1, k - 1))
        for i in range(0, len(evals), stride):
            if len(keep) >= k:
                break
            keep.add(i)
        return [evals[i] for i in sorted(keep)]

    # -- parsing ----------------------------------------------------------------------------------------

    def parse(self, replies: list[str], n: int, seen: Callable[[str], bool] | None = None) -> Parsed:
        """Candidates from raw replies, in the LLM's order, at most ``n``.

        ``seen(text) -> bool`` says whether a text was already tried (or shown to the LLM). Each dropped
        line is counted under its reason: ``non_printable``, ``too_long``, ``chatter`` (talk or markup such as
        a code fence or a JSON bracket), ``empty`` (nothing left once list markers and quotes are removed; blank
        lines are skipped uncounted), ``duplicate``, ``seen_before``, ``surplus``. Never raises on the reply.
        """
        out = Parsed()
        keys: set[str] = set()
        for reply in replies:
            if not isinstance(reply, str):
                out.rejected["empty"] += 1
                continue
            for raw in reply.splitlines():
                if not raw.strip():
                    continue
                reason, text = self._clean(raw)
                if reason is None:
                    key = normalize(text)
                    if key in keys:
                        reason = "duplicate"
                    elif seen is not None and seen(text):
                        reason = "seen_before"
                    elif len(out.candidates) >= n:
                        reason = "surplus"
                if reason is not None:
                    out.rejected[reason] += 1
                    continue
                keys.add(normalize(text))
                out.candidates.append(text)
        if not out.candidates and not out.rejected:
            out.rejected["empty"] += 1
        return out

    def _clean(self, raw: str) -> tuple[str | None, str]:
        if len(raw) > 4 * self.max_chars:
            return "too_long", ""
        text = raw.strip().replace("**", "").replace("__", "")
        if _MARKUP.search(text):
            return "chatter", ""
        text = _PREFIX.sub("", text).strip()
        text = _DESCENT_SUFFIX.sub("", text).strip()
        text = _SCORE_SUFFIX.sub("", text).strip()
        text = _COUNT_SUFFIX.sub("", text).strip()
        text = _ITEM_COMMA.sub(r"\1", text)
        while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        text = text.strip(_QUOTES).strip()
        if not text or not any(c.isalpha() for c in text):
            return "empty", ""
        if not text.isprintable():
            return "non_printable", ""
        if len(text) > self.max_chars or len(text.split()) > self.max_words:
            return "too_long", ""
        if _CHATTER.match(text) or text.endswith(":"):
            return "chatter", ""
        return None, text


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace('"', "'")
    return text if len(text) <= limit else text[: limit - 3] + "..."
