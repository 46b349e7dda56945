"""``SearchConfig``: every setting of an ``LLMSearch`` in one validated dataclass (the LLM, ``metric`` and ``mode``
are the searcher's own arguments).

Its design is a named preset (``ray_llm_search.presets``) or ``"custom"``. ``preset`` defaults to the recommended
design, ``presets.DEFAULT`` (``"authors-paired"``), unless the config sets the design's shape itself
(``population``, ``generations``, ``elites``, ``schedule`` or ``screen``): then it is ``"custom"``, today's
``population`` phases per generation with ``elites`` carried (the first design, ``"restarts"``, by default).
A named preset is measured against gradient chains (``population`` chains, ``generations`` phases of ``steps``
steps evaluated every ``eval_every``) and computes its schedule from ``steps`` and ``eval_every``: give them here,
or let Tune hand them over (``LLMSearch.set_search_properties`` reads the trial config's). The settings a
preset makes (``None`` here: "the design's") can be set to override it, as ``LLMSearch.from_preset``'s keyword
arguments do. ``resolved()`` is the ``"custom"`` config the search runs.

Example:
    >>> config = SearchConfig(task_description="Classify news.", seed_prompts=["the topic is"], steps=8,
    ...                       eval_every=4)
    >>> config.preset, config.resolved().population, len(config.resolved().schedule)
    ('authors-paired', 1, 5)
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from ray_llm_search import presets
from ray_llm_search.budget import LLMBudget

CUSTOM = "custom"
PROPOSALS = ("llm", "perturb")
MENTOR_SCORES = ("vectors", "text", "descent")
SELECT = ("metric", "loss")
# Settings a named preset makes; None means "the design's" (with "custom": the first design's, below).
CUSTOM_DEFAULTS = {"elites": 1, "screen": 0, "reuse_start_score": False, "screen_test": "gain", "overlap": False,
                   "candidate_start": "text", "mentor_scores": "vectors", "select": "metric"}
# Settings that make a config without a preset "custom": the design's shape.
SHAPE = ("population", "generations", "elites", "schedule", "screen")
_SCHEDULE_KEYS = {"steps", "screen", "eval_every", "population", "elites"}


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _help(text: str, default: Any = MISSING, factory: Any = MISSING) -> Any:
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class SearchConfig:
    """The settings of an ``LLMSearch``; each field's ``metadata["help"]`` says what it does
    (``SearchConfig.help()`` lists them)."""

    task_description: str = _help("What the prompt is for, shown to the LLM.", "")
    seed_prompts: list[str] = _help("Generation 0 starts from these (cycled if fewer than population).", factory=list)
    preset: str | None = _help(
        "The design: a name of ray_llm_search.presets, or 'custom'. Default: presets.DEFAULT ('authors-paired'), or "
        "'custom' where population, generations, elites, schedule or screen is set.", None)
    population: int | None = _help(
        "Trials (gradient phases) per generation ('custom'; default 4); with a named preset, the gradient chains it "
        "is measured against (default 4).", None)
    generations: int | None = _help(
        "Generations, generation 0 included ('custom'; default: the schedule's length, else 3); with a named preset, "
        "the phases of the chains it is measured against (default 3).", None)
    elites: int | None = _help("Best phases carried into the next generation from their exact vectors (default 1).",
                               None)
    steps: int | None = _help("A named preset's phase length (the trial config's steps; default: Tune's).", None)
    eval_every: int | None = _help("A named preset's evaluation interval (the trial config's; default: Tune's).", None)
    schedule: list[dict] | None = _help(
        "One dict per generation, {'steps': K, 'screen': S, 'eval_every': E, 'population': P, 'elites': N} (each key "
        "optional): steps/eval_every override the trial config's for that generation (steps 0 evaluates the starts "
        "as text), screen overrides screen, population/elites override population/elites (not generation 0). Its "
        "length is the number of generations.", None)
    screen: int | None = _help(
        "Candidates each continuing phase (elite) evaluates as text before its first step; it starts from the best "
        "of them only if that beats its own start on validation (default 0: no screening).", None)
    top_k: int = _help("Trajectories the LLM sees each round.", 8)
    candidates_per_round: int | None = _help("Prompts asked of the LLM; default: what the round needs.", None)
    max_prompt_words: int = _help("Longer LLM candidates are rejected.", 16)
    seed: int = _help("Seeds phase RNGs and the order of pool fill-ins.", 0)
    log_dir: str | None = _help(
        "Where records, TensorBoard events, best.json, the LLM journal and (with a local storage_path) the prompt "
        "vectors go: a local path of the driver's; default ~/ray_results/llm_search/<UTC time>.", None)
    llm_timeout_s: float = _help("A round that takes longer (all its asks together) is abandoned and filled from the "
                                 "pool.", 900.0)
    meta_prompt_style: str | None = _help("'chat' or 'completion'; default: the LLM's style.", None)
    llm_reasks: int = _help("Asks again (after 1 s, 2 s, ...) when a reply holds no usable prompt.", 0)
    proposals: str = _help("Where new starts and screened candidates come from: 'llm' (the mentor) or 'perturb' "
                           "(random word edits of the best texts, no LLM call: the no-LLM control).", "llm")
    candidate_start: str | None = _help(
        "'text' (a screened candidate starts from its embedding) or 'mix' ((1 - mix_alpha) * elite vectors + "
        "mix_alpha * candidate embedding).", None)
    mix_alpha: float = _help("The candidate's share of a 'mix' start.", 0.5)
    reuse_start_score: bool | None = _help("An elite takes its saved validation score as its step-0 evaluation.", None)
    screen_margin: float = _help("A screened candidate wins only with more than this many more validation examples "
                                 "right.", 0)
    screen_test: str | None = _help("'gain' (a higher score wins) or 'paired' (a sign test on the examples where "
                                    "candidate and elite disagree).", None)
    llm_budget: LLMBudget | dict | None = _help(
        "Limits on the mentor's calls, tokens and cost (ray_llm_search.budget).", None)
    mentor_scores: str | None = _help(
        "What the LLM is shown: 'vectors' (projected texts with their vectors' scores), 'text' (texts scored as "
        "text) or 'descent' (what descent did to each start).", None)
    select: str | None = _help("How best() chooses the final prompt: 'metric' or 'loss' (the lowest validation "
                               "loss).", None)
    prompt_tokens: int | None = _help("The trainable's prompt length, told to the mentor (None: only "
                                      "max_prompt_words).", None)
    overlap: bool | None = _help(
        "The chain descends while the mentor thinks; the round's candidates reach the running phase through a "
        "mailbox. Needs elites == population.", None)

    def __post_init__(self) -> None:
        if isinstance(self.seed_prompts, str):
            raise ValueError("seed_prompts must be a list of prompts, not one string")
        seeds = [s.strip() for s in (self.seed_prompts or []) if isinstance(s, str) and s.strip()]
        if not seeds:
            raise ValueError("seed_prompts must hold at least one non-empty prompt, e.g. ['a photo of a']")
        self.seed_prompts = seeds
        if self.preset is None:
            self.preset = CUSTOM if any(getattr(self, name) is not None for name in SHAPE) else presets.DEFAULT
        if self.preset != CUSTOM and self.preset not in presets.PRESETS:
            raise ValueError(f"preset must be one of {presets.PRESETS} or 'custom', got {self.preset!r}")
        if self.preset == CUSTOM:
            self._check_custom()
        else:
            self.population = 4 if self.population is None else self.population
            self.generations = 3 if self.generations is None else self.generations
            for name in ("population", "generations"):
                _check(name, getattr(self, name), _is_int(getattr(self, name), 1), "an integer >= 1")
            self.schedule = _check_schedule(self.schedule)
        for name in ("steps", "eval_every"):
            value = getattr(self, name)
            _check(name, value, value is None or _is_int(value, 1), "None or an integer >= 1")
        self._check_settings()

    def _check_custom(self) -> None:
        """The first design's defaults filled in, and the shape checked."""
        _check("population", self.population, self.population is None or _is_int(self.population, 1),
               "an integer >= 1")
        self.population = 4 if self.population is None else self.population
        for name, default in CUSTOM_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        schedule, generations = _check_schedule(self.schedule), self.generations
        if schedule is not None:
            if generations is not None and generations != len(schedule):
                raise ValueError(f"generations={generations} but schedule has {len(schedule)} entries (one per "
                                 "generation); pass one of them")
            generations = len(schedule)
        self.schedule, self.generations = schedule, 3 if generations is None else generations
        _check("generations", self.generations, _is_int(self.generations, 1), "an integer >= 1")
        if not isinstance(self.elites, int) or not 0 <= self.elites <= self.population:
            raise ValueError(f"elites must be an integer in [0, population] = [0, {self.population}], got "
                             f"{self.elites!r}")

    def _check_settings(self) -> None:
        for name, valid, what in _ARGUMENT_CHECKS:
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        self.mix_alpha = float(self.mix_alpha)
        if self.reuse_start_score is not None:
            self.reuse_start_score = bool(self.reuse_start_score)
        if self.preset == CUSTOM:
            self._check_overlap()
        self.llm_budget = LLMBudget.parse(self.llm_budget)
        log_dir = self.log_dir
        if log_dir is not None and (not isinstance(log_dir, str) or "://" in log_dir):
            raise ValueError(
                f"log_dir must be a local filesystem path (the driver's), got {log_dir!r}; a URI such as s3://... "
                "belongs in Tune's storage_path, where the phases then keep their vectors"
            )
        style = self.meta_prompt_style
        if style is not None and style not in ("chat", "completion"):
            raise ValueError(f"meta_prompt_style must be 'chat' or 'completion', got {style!r}")

    def _check_overlap(self) -> None:
        if not self.overlap:
            return
        if self.elites != self.population:
            raise ValueError(f"overlap=True needs elites == population (every phase continues a chain; a new start "
                             f"waits for its round's text anyway), got elites={self.elites!r}, "
                             f"population={self.population!r}")
        narrowed = [i for i, e in enumerate(self.schedule or []) if i and e.get("population", self.population)
                    != e.get("elites", self.elites)]
        if narrowed:
            entry = self.schedule[narrowed[0]]
            raise ValueError(f"overlap=True needs elites == population in every generation, and "
                             f"schedule[{narrowed[0]}] has population {entry.get('population', self.population)} and "
                             f"elites {entry.get('elites', self.elites)}")

    # -- the design --------------------------------------------------------------------------------------------

    @property
    def resolvable(self) -> bool:
        """Whether ``resolved()`` can compute the design now (a named preset needs ``steps`` and ``eval_every``)."""
        return self.preset == CUSTOM or (self.steps is not None and self.eval_every is not None)

    def resolved(self) -> SearchConfig:
        """The ``"custom"`` config this one runs: a named preset's settings (``presets.preset``) at the budget of
        ``population`` chains of ``generations`` phases of ``steps`` steps, with this config's own settings over
        them, and the preset's number of seed prompts."""
        if self.preset == CUSTOM:
            return self
        if not self.resolvable:
            raise ValueError(
                f"preset {self.preset!r} computes its schedule from the trial config's steps and eval_every: pass "
                "them (LLMSearch(..., steps=K, eval_every=E), SearchConfig(steps=, eval_every=)), or run it in Tune "
                "with integer 'steps' and 'eval_every' in the param space, or choose preset='custom'")
        kw = presets.preset(self.preset, population=self.population, generations=self.generations, steps=self.steps,
                            eval_every=self.eval_every)
        first = kw.pop("seed_prompts", None)
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name in CUSTOM_DEFAULTS or f.name == "schedule"}
        kw.update({name: value for name, value in own.items() if value is not None})
        cleared = {name: None for name in SHAPE + tuple(CUSTOM_DEFAULTS)}
        return replace(self, **{**cleared, **kw}, preset=CUSTOM, seed_prompts=self.seed_prompts[:first] if first
                       else list(self.seed_prompts), steps=None, eval_every=None)

    def with_budget(self, steps: int, eval_every: int) -> SearchConfig:
        """This config with a named preset's ``steps`` and ``eval_every`` (Tune's trial config's), where unset."""
        if self.preset == CUSTOM:
            return self
        return replace(self, steps=self.steps if self.steps is not None else steps,
                       eval_every=self.eval_every if self.eval_every is not None else eval_every)

    # -- plain data ----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``from_dict`` makes the same config again)."""
        out = asdict(self)
        budget = self.llm_budget
        out["llm_budget"] = None if budget is None else budget.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"SearchConfig has no settings {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def help(cls) -> str:
        """One line per setting: its name, default and what it does."""
        return "\n".join(f"{f.name} (default {'[]' if f.default is MISSING else repr(f.default)}): "
                         f"{f.metadata['help']}" for f in fields(cls))


SETTINGS = tuple(f.name for f in fields(SearchConfig))


def _check(name: str, value: Any, valid: bool, what: str) -> None:
    if not valid:
        raise ValueError(f"{name} must be {what}, got {value!r}")


# The plain settings: (name, is it valid, what it must be); None (unset) is always valid here.
_ARGUMENT_CHECKS = (
    ("screen", lambda v: _is_int(v, 0), "an integer >= 0"),
    ("proposals", lambda v: v in PROPOSALS, f"one of {PROPOSALS}"),
    ("candidate_start", lambda v: v in ("text", "mix"), "'text' or 'mix'"),
    ("mix_alpha", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
    ("screen_margin", lambda v: _is_number(v) and v >= 0, "a number of validation examples >= 0"),
    ("screen_test", lambda v: v in ("gain", "paired"), "'gain' or 'paired'"),
    ("mentor_scores", lambda v: v in MENTOR_SCORES, f"one of {MENTOR_SCORES}"),
    ("select", lambda v: v in SELECT, f"one of {SELECT}"),
    ("top_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("candidates_per_round", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("max_prompt_words", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("prompt_tokens", lambda v: _is_int(v, 1), "None or an integer >= 1"),
    ("llm_timeout_s", lambda v: isinstance(v, (int, float)) and v > 0, "a number of seconds > 0"),
    ("llm_reasks", lambda v: _is_int(v, 0), "an integer >= 0"),
    ("overlap", lambda v: isinstance(v, bool), "True or False"),
)


def _check_schedule(schedule: list[dict] | None) -> list[dict] | None:
    """A validated copy of ``schedule``: a non-empty list of dicts with integer ``steps`` >= 0, ``screen`` >= 0,
    ``eval_every`` >= 1, ``population`` >= 1 and ``elites`` >= 0 (at most the entry's population), each optional."""
    if schedule is None:
        return None
    if isinstance(schedule, (str, dict)) or not isinstance(schedule, (list, tuple)) or not schedule:
        raise ValueError(f"schedule must be a non-empty list of dicts, one per generation, got {schedule!r}")
    out = []
    for i, entry in enumerate(schedule):
        if not isinstance(entry, dict) or set(entry) - _SCHEDULE_KEYS:
            raise ValueError(f"schedule[{i}] must be a dict with keys among {sorted(_SCHEDULE_KEYS)}, got {entry!r}")
        for key, low in (("steps", 0), ("screen", 0), ("eval_every", 1), ("population", 1), ("elites", 0)):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"schedule[{i}][{key!r}] must be an integer >= {low}, got {value!r}")
        if entry.get("elites") is not None and entry.get("population") is not None and entry["elites"] > entry["population"]:
            raise ValueError(f"schedule[{i}]: elites ({entry['elites']}) must be at most its population "
                             f"({entry['population']})")
        out.append(dict(entry))
    return out


# The constructor's arguments after seed_prompts, in their old positional order (deprecated positionally).
_POSITIONAL = ("metric", "mode", "population", "generations", "elites", "top_k", "candidates_per_round",
               "max_prompt_words", "seed", "log_dir", "llm_timeout_s", "meta_prompt_style", "llm_reasks", "schedule",
               "screen", "proposals", "candidate_start", "mix_alpha", "reuse_start_score", "screen_margin",
               "screen_test", "llm_budget", "mentor_scores", "select", "prompt_tokens", "overlap")


def legacy_positional(positional: tuple, keywords: dict) -> dict:
    """The constructor's keywords, with arguments passed positionally after ``seed_prompts`` (deprecated: the
    old signature) named, and a ``DeprecationWarning`` naming the keywords to use."""
    if not positional:
        return keywords
    if len(positional) > len(_POSITIONAL):
        raise TypeError(f"LLMSearch() takes at most {3 + len(_POSITIONAL)} positional arguments")
    named = dict(zip(_POSITIONAL, positional, strict=False))
    for name in named:
        if keywords.get(name) is not None:
            raise TypeError(f"LLMSearch() got multiple values for argument {name!r}")
    warnings.warn("LLMSearch(llm, task_description, seed_prompts, ...) takes its other arguments by keyword: pass "
                  + ", ".join(f"{name}=..." for name in named) + " (positionally they stop working in the next "
                  "release)", DeprecationWarning, stacklevel=3)
    return {**keywords, **named}


def config_of_arguments(task_description: Any, seed_prompts: Any, config: SearchConfig | None, settings: dict) -> SearchConfig:
    """The ``SearchConfig`` of the constructor's arguments: ``config``, or one made of the keyword settings."""
    if isinstance(task_description, SearchConfig):
        config, task_description = task_description if config is None else config, None
    if config is None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(f"LLMSearch() got an unexpected keyword argument {unknown[0]!r} (its settings are "
                            "SearchConfig's fields: SearchConfig.help())")
        return SearchConfig(task_description=task_description or "", seed_prompts=seed_prompts, **settings)
    given = sorted(settings) + [n for n, v in (("task_description", task_description), ("seed_prompts", seed_prompts))
                                if v is not None]
    if not isinstance(config, SearchConfig) or given:
        raise ValueError(f"pass the search's settings either as config=SearchConfig(...) or as arguments, not both: "
                         f"got config={type(config).__name__} and {given}")
    return config
