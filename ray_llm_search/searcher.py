"""``LLMSearch``: a Ray Tune searcher in which an LLM mentors gradient-descent phases (MaaO): the Tune adapter.

Each Tune trial is one gradient phase. A generation is ``population`` phases; when all of them have
finished (or errored, or were stopped by a scheduler), the best trajectories go to the LLM in a
background thread, and the next generation is the elites (resumed from their exact vectors) plus the
LLM's new prompts, topped up from the pool if the LLM gives too few or fails. What each generation runs is the
generation policy's (``ray_llm_search.policy``); the settings are a ``SearchConfig`` (``ray_llm_search.config``).

Crash safety: the state Tune saves with the experiment is plain data; every LLM answer is also journaled in
``<log_dir>/llm_rounds.jsonl`` as it arrives, so that a search restored from a state saved before the answer
replays it instead of asking again, and a generation recorded again after a restore replaces its record.
"""

from __future__ import annotations

import os
import pickle
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from ray.tune.search import Searcher

from ray_llm_search import budget, contract, presets, space
from ray_llm_search import config as cfg
from ray_llm_search.config import MENTOR_SCORES, PROPOSALS, SELECT, SearchConfig
from ray_llm_search.llm.base import LLM
from ray_llm_search.mentor import Mentor
from ray_llm_search.policy import GenerationPolicy, _is_int, logger, mentor_threads
from ray_llm_search.pool import Trajectory
from ray_llm_search.rounds import Journal, RoundEngine

__all__ = ["LLMSearch", "CONFIG_KEYS", "OPTIONAL_CONFIG_KEYS", "PROPOSALS", "MENTOR_SCORES", "SELECT",
           "mentor_threads"]

_STATE_VERSION = 1
# The keys the searcher adds to each trial's config live with the rest of the contract.
CONFIG_KEYS, OPTIONAL_CONFIG_KEYS = contract.CONFIG_KEYS, contract.OPTIONAL_CONFIG_KEYS


class LLMSearch(GenerationPolicy, Searcher):
    """LLM + gradient descent prompt search for Ray Tune.

    ``LLMSearch(llm, task_description, seed_prompts, *, metric=None, mode=None, **settings)`` or
    ``LLMSearch(llm, config=SearchConfig(...), metric=None, mode=None)``: ``llm`` is the mentor, any
    ``ray_llm_search.llm.LLM`` (``OpenAIChat``, ``LocalLLM``, your own); ``metric``/``mode`` what trials report and
    which way is better (or from Tune); every other setting is a field of ``SearchConfig`` (its ``help()`` lists
    them), passed as a keyword or in ``config``, not both.

    One default, the recommended design: without a ``preset`` and without the design's shape (``population``,
    ``generations``, ``elites``, ``schedule``, ``screen``) the search is ``presets.DEFAULT`` (``"authors-paired"``),
    the same design ``LLMSearch.from_preset`` builds; its schedule is computed from the trial config's ``steps`` and
    ``eval_every`` when Tune hands the param space over (``set_search_properties``), or from ``steps=``/``eval_every=``
    given here. Until then ``total_trials`` is unknown: pass ``steps``/``eval_every`` to use it (or Tune's
    ``num_samples=-1``: the search ends itself). With the shape given (or ``preset="custom"``) it is the search
    those settings say, the first design (``"restarts"``) by default.

    Example:
        >>> search = LLMSearch(LocalLLM(), "Classify BBC news by topic.", ["the topic of this article is"],
        ...                    metric="val_acc", mode="max", steps=base["steps"], eval_every=base["eval_every"])
        >>> tune.run(train_text_prompt, config=base, search_alg=search, num_samples=search.total_trials)
    """

    def __init__(self, llm: LLM, task_description: str | SearchConfig | None = None,
                 seed_prompts: list[str] | None = None, *positional: Any, metric: str | None = None,
                 mode: str | None = None, config: SearchConfig | None = None, **settings: Any) -> None:
        settings = cfg.legacy_positional(positional, {"metric": metric, "mode": mode, **settings})
        metric, mode = settings.pop("metric"), settings.pop("mode")
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        if not hasattr(llm, "propose"):
            raise ValueError(f"llm must have propose(meta_prompt, n), e.g. LocalLLM() or OpenAIChat(...); got {llm!r}")
        config = cfg.config_of_arguments(task_description, seed_prompts, config, settings)
        super().__init__(metric=metric, mode=mode)
        self.llm = llm
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
        self.log_dir = os.path.abspath(os.path.expanduser(config.log_dir or f"~/ray_results/llm_search/{stamp}"))
        self._lock = threading.RLock()  # the LLM thread delivers overlapped rounds (overlap=True) under it
        self._mailbox = None  # made on first use (ray_llm_search.mailbox); never pickled
        # This object's own id (a pickled copy gets a new one): a restore replays only the journaled answers of
        # the object that saved the state, never those a copy of it asked for on its own.
        self._incarnation = uuid.uuid4().hex[:12]
        self._replay_from: str | None = None  # set by set_state: the incarnation whose journaled answers it replays
        self._domains: list = []  # the Tune search-space domains of the base config (see ray_llm_search.space)
        self._engine: RoundEngine | None = None
        self._log = None
        self._cpu_s, self._events = 0.0, 0  # the searcher's own CPU time and Tune events (_tick)
        self._apply(config)

    def _apply(self, config: SearchConfig) -> None:
        """Take ``config``: its settings as attributes, and (once its design is known) a fresh state and engine."""
        self.config = config
        self.preset: str | None = None if config.preset == cfg.CUSTOM else config.preset  # the named design, if any
        design = config.resolved() if config.resolvable else None
        owned = set(cfg.SHAPE) | set(cfg.CUSTOM_DEFAULTS) | {"seed_prompts"}
        for name in cfg.SETTINGS:
            if name not in ("preset", "steps", "eval_every", "log_dir") and (design is not None or name not in owned):
                setattr(self, name, getattr(design or config, name))
        style = config.meta_prompt_style or getattr(self.llm, "style", "chat")
        if style not in ("chat", "completion"):
            raise ValueError(f"meta_prompt_style must be 'chat' or 'completion', got {style!r}")
        self.meta_prompt_style = style
        if design is not None:
            self._reset_state()
            if self._engine is not None:
                self._engine.close()
            self._engine = self._round_engine()

    @property
    def _ready(self) -> bool:
        """Whether the design is known (a named preset's schedule needs the phases' steps and eval_every)."""
        return "_generation" in self.__dict__

    def _require_design(self) -> None:
        if not self._ready:
            self.config.resolved()  # raises: says what is missing

    @classmethod
    def from_preset(cls, llm: LLM, task_description: str, seed_prompts: list[str], preset: str = presets.DEFAULT, *,
                    steps: int, eval_every: int, population: int = 4, generations: int = 3,
                    **kwargs: Any) -> LLMSearch:
        """An ``LLMSearch`` of a named design (``ray_llm_search.presets``) at the budget of ``population``
        gradient chains run for ``generations`` phases of ``steps`` steps, evaluated every ``eval_every``:
        pass the trial config's ``steps`` and ``eval_every``. The default, ``presets.DEFAULT``
        (``"authors-paired"``: one chain, three early LLM rounds whose candidates must win a paired test against
        it, one long descent), is the design that measured best across tasks (``examples/RESULTS.md``) and the
        constructor's own default: ``LLMSearch(llm, task, seeds, metric=, mode=)`` builds the same
        ``SearchConfig`` once it knows ``steps`` and ``eval_every``. It runs one trial at a time, so give that trial
        the machine's CPUs or GPUs. ``"chains-paired"`` keeps ``population`` trials busy.
        ``kwargs`` go to the constructor (``metric``, ``mode``, ``log_dir``, ``seed``, ...) and override the
        preset's own settings.

        Example:
            >>> search = LLMSearch.from_preset(LocalLLM(), TASK, SEEDS, metric="val_acc", mode="max",
            ...                                steps=base["steps"], eval_every=base["eval_every"])
            >>> tune.run(train_text_prompt, config=base, search_alg=search, num_samples=search.total_trials)
        """
        return cls(llm, task_description, seed_prompts, preset=preset, steps=steps, eval_every=eval_every,
                   population=population, generations=generations, **kwargs)

    @property
    def total_trials(self) -> int:
        """Trials this search creates; pass it (or more) as Tune's ``num_samples``."""
        self._require_design()
        return max(self.population, len(self.seed_prompts)) + sum(self._plan(g)["population"]
                                                                  for g in range(1, self.generations))

    @property
    def mentor(self) -> Mentor:
        return Mentor(self.task_description, self._metric or "metric", self._mode or "max",
                      max_words=self.max_prompt_words, prompt_tokens=self.prompt_tokens)

    # -- state -------------------------------------------------------------------------------------------

    def get_state(self) -> dict:
        """Everything needed to continue: plain data, no LLM, no secret, no thread."""
        self._require_design()
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "metric": self._metric,
            "mode": self._mode,
            **self._policy_state(),
            "log_dir": self.log_dir,
            "search_id": self._search_id,
            "incarnation": self._incarnation,
        }

    def set_state(self, state: dict) -> None:
        """Continue from ``get_state()``'s data (a state of the version before ``SearchConfig`` has no config:
        the search keeps its own settings)."""
        with self._lock:  # the LLM thread of overlap=True may deliver meanwhile
            self._set_state(state)

    def _set_state(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r} is not {_STATE_VERSION}")
        if state.get("config") is not None:
            self._apply(SearchConfig.from_dict(state["config"]))
        self._require_design()
        self._metric, self._mode = state["metric"], state["mode"]
        self._load_policy_state(state)
        self.log_dir = state["log_dir"]
        self._search_id = state.get("search_id") or self._search_id
        # The engine consults the LLM journal of the object that saved the state before asking.
        self._replay_from = state.get("incarnation")
        self._engine.close()
        self._engine = self._round_engine()
        # A crashed driver may have written generations past this state: they are written again, replacing
        # their lines in generations.jsonl and (see GenerationLog) their TensorBoard points.
        self._log = None
        # The restored chains' phases read the mailbox of this search's name: it is made again at the next event
        # (Ray is up by then), with every candidate posted before (a phase skips those its cursor says it screened).
        self._mailbox = None
        # A round still running when the state was saved is asked again, unless the crashed run journaled its
        # answer (see _ask); finished rounds are never asked again.
        pending = self._pending_round() if self.overlap else self._rounds.get(self._generation)
        if pending is not None and pending.status == "pending":
            self._restart_round(pending.generation)

    def save(self, checkpoint_path: str) -> None:
        tmp = checkpoint_path + ".tmp"
        with self._lock, open(tmp, "wb") as f:
            pickle.dump(self.get_state(), f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self) -> dict:
        # Tune pickles the search algorithm with the experiment: leave out threads, locks, actors, open writers.
        with self._lock:
            state = dict(self.__dict__)
        state.update(_engine=None, _log=None, _lock=None, _mailbox=None)
        return state

    def __setstate__(self, state: dict) -> None:
        # Defaults for what an LLMSearch pickled by an older version (a tuner.pkl) lacks.
        self.__dict__.update({"llm_reasks": 0, "_replay_from": None, "config": None,
                              "_search_id": uuid.uuid4().hex[:16], "schedule": None, "screen": 0, "proposals": "llm",
                              "candidate_start": "text", "mix_alpha": 0.5, "reuse_start_score": False,
                              "screen_margin": 0, "screen_test": "gain", "llm_budget": None, "mentor_scores": "vectors",
                              "preset": None, "select": "metric", "overlap": False, "prompt_tokens": None,
                              "_posted": {}, "_closed": [], "_cursor": {}, "_waiting": [], "_held": [],
                              "_screened": {}, "_suspicious": {}, "_domains": [], "_space_rng": random.Random()})
        for stale in ("_executor", "_future", "_budget_warned", "_restored"):  # pickled by an older version
            state.pop(stale, None)
        self.__dict__.update(state)
        if self.config is None:  # pickled before SearchConfig: its settings are its attributes
            self.config = SearchConfig(**{name: getattr(self, name) for name in cfg.SETTINGS if name not in (
                "preset", "steps", "eval_every")}, preset=cfg.CUSTOM)
        self._incarnation = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._mailbox = None
        if self._ready:
            self._rounds = {g: self._round_from_state(r) for g, r in self._rounds.items()}
            self._engine = self._round_engine()

    def _round_engine(self) -> RoundEngine:
        journal = Journal(self.log_dir, self._search_id, self._incarnation, self._replay_from)
        return RoundEngine(self.llm, journal, self.llm_timeout_s, self.llm_reasks, self.llm_budget,
                           on_event=self._deliver if self.overlap else None)

    # -- Tune's interface ---------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        """Tune's metric, mode and param space: a named preset's schedule is computed here from the param space's
        ``steps`` and ``eval_every`` (where the search was not given its own)."""
        if self._metric and metric and self._metric != metric or self._mode and mode and self._mode != mode:
            # Tune would carry on with the searcher's own metric and rank trials by the other one.
            raise ValueError(
                f"LLMSearch was made with metric={self._metric!r}, mode={self._mode!r}, but Tune was given "
                f"metric={metric!r}, mode={mode!r}; pass them in one place (LLMSearch(...) or tune.run/TuneConfig), "
                "or the same in both"
            )
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        steps, every = (config or {}).get("steps"), (config or {}).get("eval_every")
        if not self._ready and _is_int(steps, 1) and _is_int(every, 1):
            with self._lock:
                self._apply(self.config.with_budget(steps, every))
        num_samples = spec.get("num_samples")
        if self._ready and isinstance(num_samples, int) and 0 <= num_samples < self.total_trials:
            raise ValueError(
                f"num_samples={num_samples} is fewer than the {self.total_trials} trials this search makes: its last "
                "generation would never complete (no best.json); pass num_samples=search.total_trials"
            )
        self._domains = space.find_domains(config)
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        if self._ready:
            self._pool.mode = self._mode or "max"
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        start = time.thread_time()
        with self._lock:
            try:
                return self._suggest(trial_id)
            finally:
                self._tick(start)

    def _suggest(self, trial_id: str) -> dict | str | None:
        if not self._metric or not self._mode:
            raise ValueError(
                "LLMSearch needs metric and mode: pass them to LLMSearch(...) or to tune.run/TuneConfig"
            )
        self._require_design()
        if self._generation >= self.generations:
            return Searcher.FINISHED
        self._wait_if_idle()
        if self.overlap:
            # made at the first ask, so that its process has started by the time the first chain reads it (and a
            # restored search's running phases find it again, with what it had posted)
            self._box()
        self._poll_round()
        if not self._queue:
            last = self._generation == self.generations - 1
            if last and self._handed[self._generation] >= self._sizes[self._generation]:
                return Searcher.FINISHED
            return None
        return self._hand_out(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        start = time.thread_time()
        with self._lock:
            try:
                self._record(trial_id, result)
                if self.overlap:
                    self._poll_round()  # the round's candidates reach the running chain at its next evaluation
            finally:
                self._tick(start)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self._lock:
            self._on_trial_complete(trial_id, result, error)

    def _on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        start = time.thread_time()
        try:
            trajectory = self._pool.trajectories.get(trial_id) if self._ready else None
            if trajectory is None or trajectory.status != "running":
                return  # not ours, or already counted (Tune calls again with error=True if we raised)
            trajectory.status = "error" if error else "finished"
            if result and not error:
                try:
                    self._record(trial_id, result)
                except ValueError:
                    logger.exception("trial %s: final result unusable", trial_id)
            self._maybe_complete_generation(trajectory.generation)
        finally:
            self._tick(start)

    def _tick(self, start: float) -> None:
        # thread_time, not process_time: the LLM thread (a local model may use every core) is not ours.
        self._cpu_s += time.thread_time() - start
        self._events += 1

    @property
    def cpu_seconds_per_event(self) -> float:
        """The searcher's own CPU time per Tune event (suggest, result, complete), LLM thread excluded."""
        return self._cpu_s / max(1, self._events)

    # -- results ------------------------------------------------------------------------------------------

    def best(self) -> dict[str, Any] | None:
        """The final prompt so far, chosen as ``select`` says: its prompt text, metric, loss, step, vectors'
        path (``None`` where the phase kept no vectors for it) and where its phase started."""
        if not self._ready:
            return None
        found = self._pool.chosen(self.select)  # pool.selection_key: the rule the comparison's arms choose by too
        if found is None:
            return None
        trajectory, e = found
        path = trajectory.loss_vectors_path if self.select == "loss" else trajectory.vectors_path
        return {
            "prompt_text": e.text,
            "metric": self._metric,
            "value": e.metric,
            "loss": e.loss,
            "step": e.step,
            "selected_by": "loss" if self.select == "loss" else self._metric,
            "vectors_path": path,
            "trial_id": trajectory.trial_id,
            "generation": trajectory.generation,
            "origin": trajectory.origin,
            "prompt_init": trajectory.prompt_init,
            "hyperparameters": dict(trajectory.hyperparameters),
        }

    @property
    def records(self) -> list[dict]:
        """One summary per completed generation (also in ``<log_dir>/generations.jsonl``)."""
        return list(self._records) if self._ready else []

    @property
    def trajectories(self) -> list[Trajectory]:
        return list(self._pool.trajectories.values()) if self._ready else []

    def dry_run(self) -> dict:
        """What this search would ask of its LLM, without asking (``budget.dry_run``)."""
        self._require_design()
        return budget.dry_run(self)
