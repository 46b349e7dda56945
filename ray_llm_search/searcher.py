"""``LLMSearch``: a Ray Tune searcher in which an LLM mentors gradient-descent phases (MaaO).

Each Tune trial is one gradient phase. A generation is ``population`` phases; when all of them have
finished (or errored, or were stopped by a scheduler), the best trajectories go to the LLM in a
background thread, and the next generation is the elites (resumed from their exact vectors) plus the
LLM's new prompts, topped up from the pool if the LLM gives too few or fails.

Crash safety: the state Tune saves with the experiment is plain data; every LLM answer is also journaled in
``<log_dir>/llm_rounds.jsonl`` as it arrives, so that a search restored from a state saved before the answer
replays it instead of asking again, and a generation recorded again after a restore replaces its record.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from ray.tune.search import Searcher

from ray_llm_search import contract, presets, space, tables
from ray_llm_search.budget import LLMBudget
from ray_llm_search.llm.base import LLM
from ray_llm_search.mailbox import make_mailbox
from ray_llm_search.mentor import Descent, Mentor
from ray_llm_search.pool import Evaluation, PromptPool, Trajectory, loss_key, normalize, perturb, vocabulary_of
from ray_llm_search.records import GenerationLog
from ray_llm_search.rounds import Journal, Round, RoundEngine, idle_wait_s

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
# The keys the searcher adds to each trial's config live with the rest of the contract.
CONFIG_KEYS, OPTIONAL_CONFIG_KEYS = contract.CONFIG_KEYS, contract.OPTIONAL_CONFIG_KEYS
PROPOSALS = ("llm", "perturb")
MENTOR_SCORES = ("vectors", "text", "descent")
SELECT = ("metric", "loss")


class LLMSearch(Searcher):
    """LLM + gradient descent prompt search for Ray Tune.

    Args:
        llm: the mentor, any ``ray_llm_search.llm.LLM`` (``OpenAIChat``, ``LocalLLM``, your own).
        task_description: what the prompt is for, shown to the LLM.
        seed_prompts: generation 0 starts from these (cycled if fewer than ``population``).
        metric, mode: what trials report and which way is better; may instead come from Tune.
        population: trials (gradient phases) per generation.
        generations: number of generations, including generation 0.
        elites: best phases carried into the next generation from their exact vectors.
        top_k: trajectories the LLM sees each round.
        candidates_per_round: prompts asked of the LLM; default ``population - elites``.
        max_prompt_words: longer LLM candidates are rejected.
        seed: seeds phase RNGs and the order of pool fill-ins.
        log_dir: where generation summaries, TensorBoard events, ``best.json``, the LLM journal and (where Tune's
            storage is a local path) the prompt vectors go; default ``~/ray_results/llm_search/<UTC time>``. A
            local path of the driver's: with ``storage_path`` on object storage (``s3://``, ``gs://``) each phase
            keeps its vectors in its trial's folder there (``trainables.phase.vector_location``), and an elite
            resumes from that URI on any node; with a local ``storage_path`` on several nodes (a shared mount),
            put ``log_dir`` on that mount too.
        llm_timeout_s: a round that takes longer (all its asks together) is abandoned and filled from the pool.
        llm_reasks: when a reply holds no usable prompt (empty, chatter, overlong, or only prompts already
            tried), ask again up to this many times, after 1 s, 2 s, ... (``rounds.REASK_BACKOFF_S``), within
            ``llm_timeout_s``; transport faults are retried by the LLM client itself (``OpenAIChat(retries=)``).
        meta_prompt_style: ``"chat"`` or ``"completion"``; default: the LLM's ``style``.
        schedule: one dict per generation, ``{"steps": K, "screen": S, "eval_every": E, "population": P,
            "elites": N}`` (each key optional); ``steps``/``eval_every`` override the trial config's for that
            generation (``steps: 0`` evaluates the starts as text), ``screen`` overrides ``screen``,
            ``population``/``elites`` override ``population``/``elites`` for that generation (not generation 0,
            which runs the seed prompts: a population that narrows keeps the best lineages, successive-halving
            style). Its length is the number of generations.
        screen: candidates each continuing phase (elite) evaluates as text before its first step; it starts from
            the best of them only if that beats its own start on validation (else it continues its chain).
            Each screened candidate is one evaluation. 0 (default): no screening.
        proposals: where new starts and screened candidates come from: ``"llm"`` (the mentor) or ``"perturb"``
            (random word edits of the best texts and the pool's projections, no LLM call: the control that
            separates what the LLM adds from what restarts add).
        candidate_start: ``"text"`` (a screened candidate starts from its embedding) or ``"mix"`` (warm restart:
            ``(1 - mix_alpha) * elite vectors + mix_alpha * candidate embedding``).
        screen_margin: a screened candidate takes an elite's place only if it gets more than this many additional
            validation examples right (0: any gain); a one-example gain on a small split is mostly luck.
        screen_test: ``"gain"`` (default: a candidate that scores higher wins) or ``"paired"`` (it must be right on
            significantly more of the validation examples where it and the elite disagree; a sign test whose
            level is shared among the screened candidates), so that luck on a small split displaces no chain.
        reuse_start_score: an elite takes its saved validation score as its step-0 evaluation instead of
            computing it again (same validation examples only); saves one evaluation per elite.
        mentor_scores: what the LLM is shown. ``"vectors"`` (default): each trajectory's projected texts next to
            the scores of the vectors they came from, which the texts themselves rarely reach. ``"text"``: only
            texts evaluated as text (starts from text, screened candidates whether adopted or not, and each
            phase followed by an LLM round evaluates its best vectors' projection as text: one more evaluation
            per such phase, ``project_best`` in ``trainables.phase``), each with its own score, best last.
            ``"descent"``: what descent did to each start (``descents()``): the start text with its score as text,
            the score its chain reached and after how many steps, and the chain's nearest words; before any chain
            has descended, as ``"text"``.
        select: how ``best()`` (and ``best.json``) chooses the final prompt among every phase's evaluations.
            ``"metric"`` (default): the best value of the searcher's metric, ties by lower loss. ``"loss"``: the
            lowest validation loss; each phase also keeps its lowest-loss vectors (``keep_lowest_loss`` in
            ``trainables.phase``). On a small validation split the highest accuracy among many evaluations is
            often a lucky one; the loss is a continuous score and less so (``examples/RESULTS.md``).
        prompt_tokens: how many tokens of a prompt the trainable keeps (its ``prompt_length``, 8 for the text
            trainable), told to the mentor with the length to aim for (``Mentor.prompt_tokens``); ``None``
            (default): the meta-prompt says only ``max_prompt_words``.
        overlap: ``False`` (default): a continuing phase (elite) that screens candidates waits for its round and
            screens them before its first step. ``True``: the chain descends while the mentor thinks: every elite
            starts at once, and the round's screened candidates, when the round ends, go to the chain's running
            phase through a mailbox (``ray_llm_search.mailbox``: a named Ray actor, or in-process without Ray),
            which screens them at its next evaluation point against its vectors there (the same test, one
            evaluation each, every loser a ``screen`` row); a winner replaces the chain's vectors (a fresh
            optimizer) and the phase goes on from it. A round whose generation completes before the previous round
            ends starts when that one ends; the last generation's phases wait at their last evaluation for every
            candidate still owed, so the budget is the serial design's. Needs ``elites == population`` (new starts
            would wait for their round anyway).

    Example:
        >>> search = LLMSearch(LocalLLM(), "Classify BBC news by topic.", ["the topic of this article is"],
        ...                    metric="val_acc", mode="max", population=4, generations=3)
        >>> tune.run(train_text_prompt, config=base, search_alg=search, num_samples=search.total_trials)
    """

    def __init__(
        self,
        llm: LLM,
        task_description: str,
        seed_prompts: list[str],
        metric: str | None = None,
        mode: str | None = None,
        population: int = 4,
        generations: int | None = None,
        elites: int = 1,
        top_k: int = 8,
        candidates_per_round: int | None = None,
        max_prompt_words: int = 16,
        seed: int = 0,
        log_dir: str | None = None,
        llm_timeout_s: float = 900.0,
        meta_prompt_style: str | None = None,
        llm_reasks: int = 0,
        schedule: list[dict] | None = None,
        screen: int = 0,
        proposals: str = "llm",
        candidate_start: str = "text",
        mix_alpha: float = 0.5,
        reuse_start_score: bool = False,
        screen_margin: float = 0,
        screen_test: str = "gain",
        llm_budget: dict | LLMBudget | None = None,
        mentor_scores: str = "vectors",
        select: str = "metric",
        prompt_tokens: int | None = None,
        overlap: bool = False,
    ) -> None:
        a = _check_arguments({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        super().__init__(metric=metric, mode=mode)
        self.llm = llm
        self.task_description = task_description
        self.seed_prompts: list[str] = a["seed_prompts"]
        self.population = population
        self.generations: int = a["generations"]
        self.elites = elites
        self.top_k = top_k
        self.candidates_per_round = candidates_per_round
        self.schedule: list[dict] | None = a["schedule"]
        self.screen = screen
        self.proposals = proposals
        self.candidate_start = candidate_start
        self.mix_alpha = float(mix_alpha)
        self.reuse_start_score = bool(reuse_start_score)
        self.screen_margin = screen_margin
        self.screen_test = screen_test
        self.mentor_scores = mentor_scores
        self.select = select
        self.prompt_tokens = prompt_tokens
        self.overlap = overlap
        self.llm_budget: LLMBudget | None = a["llm_budget"]
        self.max_prompt_words = max_prompt_words
        self.seed = seed
        self.preset: str | None = None  # the named design it was made from (from_preset), if any
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
        self.log_dir = os.path.abspath(os.path.expanduser(log_dir or f"~/ray_results/llm_search/{stamp}"))
        self.llm_timeout_s = llm_timeout_s
        self.llm_reasks = llm_reasks
        self.meta_prompt_style: str = a["meta_prompt_style"]
        self._lock = threading.RLock()  # the LLM thread delivers overlapped rounds (overlap=True) under it
        self._mailbox = None  # made on first use (ray_llm_search.mailbox); never pickled
        self._reset_state()
        # This object's own id (a pickled copy gets a new one): a restore replays only the journaled answers of
        # the object that saved the state, never those a copy of it asked for on its own.
        self._incarnation = uuid.uuid4().hex[:12]
        self._domains: list = []  # the Tune search-space domains of the base config (see ray_llm_search.space)
        self._engine = self._round_engine()
        self._log: GenerationLog | None = None

    # -- state -------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._generation = 0
        self._sizes = {0: max(self.population, len(self.seed_prompts))}
        self._handed: Counter = Counter()  # trials handed out per generation
        self._queue: list[dict] = self._seed_configs()
        self._pool = PromptPool(self._mode or "max")
        self._rounds: dict[int, Round] = {}  # generation -> what its LLM round asked, got and kept
        self._records: list[dict] = []  # one summary per completed generation
        self._held: list[dict] = []  # elites waiting for their round's candidates to screen
        self._suspicious: dict[str, dict[str, int]] = {}  # trial -> {"non_finite"/"step": count}
        self._screened: dict[int, list[dict]] = {}  # generation -> candidates evaluated as text at a start
        # overlap=True: the candidates posted to each chain (lineage) in order, the chains told that no more
        # will come, how many of its candidates each chain has screened (as its phases report), the rounds
        # whose generation completed while an earlier round was still asked
        self._posted: dict[str, list[dict]] = {}
        self._closed: list[str] = []
        self._cursor: dict[str, int] = {}
        self._waiting: list[int] = []
        self._rng = random.Random(self.seed)
        self._space_rng = random.Random(f"{self.seed}:space")  # apart from _rng: phase seeds do not depend on it
        self._cpu_s = 0.0
        self._events = 0
        # Names this search in generations.jsonl and the LLM journal, so that a restored search recognises its
        # own records in a log_dir that other searches may share.
        self._search_id = uuid.uuid4().hex[:16]
        self._replay_from: str | None = None  # set by set_state: the incarnation whose journaled answers it replays

    @classmethod
    def from_preset(cls, llm: LLM, task_description: str, seed_prompts: list[str], preset: str = presets.DEFAULT, *,
                    steps: int, eval_every: int, population: int = 4, generations: int = 3,
                    **kwargs: Any) -> LLMSearch:
        """An ``LLMSearch`` of a named design (``ray_llm_search.presets``) at the budget of ``population``
        gradient chains run for ``generations`` phases of ``steps`` steps, evaluated every ``eval_every``:
        pass the trial config's ``steps`` and ``eval_every``. The default, ``"authors"`` (the MaaO authors'
        regime: one chain, three early LLM rounds screened against it, one long descent), is the design that
        measured best across tasks (``examples/RESULTS.md``); it runs one trial at a time, so give that trial
        the machine's CPUs or GPUs. ``"chains-paired"`` keeps ``population`` trials busy.
        ``kwargs`` go to the constructor (``metric``, ``mode``, ``log_dir``, ``seed``, ...) and override the
        preset's own arguments.

        Example:
            >>> search = LLMSearch.from_preset(LocalLLM(), TASK, SEEDS, metric="val_acc", mode="max",
            ...                                steps=base["steps"], eval_every=base["eval_every"])
            >>> tune.run(train_text_prompt, config=base, search_alg=search, num_samples=search.total_trials)
        """
        kw = presets.preset(preset, population=population, generations=generations, steps=steps,
                            eval_every=eval_every)
        first = kw.pop("seed_prompts", None)
        if first and isinstance(seed_prompts, (list, tuple)):
            seed_prompts = [s for s in seed_prompts if isinstance(s, str) and s.strip()][:first] or list(seed_prompts)
        kw.update(kwargs)
        search = cls(llm, task_description, seed_prompts, **kw)
        search.preset = preset
        return search

    @property
    def total_trials(self) -> int:
        """Trials this search creates; pass it (or more) as Tune's ``num_samples``."""
        return max(self.population, len(self.seed_prompts)) + sum(self._plan(g)["population"]
                                                                  for g in range(1, self.generations))

    @property
    def mentor(self) -> Mentor:
        return Mentor(self.task_description, self._metric or "metric", self._mode or "max",
                      max_words=self.max_prompt_words, prompt_tokens=self.prompt_tokens)

    def get_state(self) -> dict:
        """Everything needed to continue: plain data, no LLM, no secret, no thread."""
        return {
            "version": _STATE_VERSION,
            "metric": self._metric,
            "mode": self._mode,
            "generation": self._generation,
            "sizes": dict(self._sizes),
            "handed": dict(self._handed),
            "queue": list(self._queue),
            "pool": self._pool,
            "rounds": self._rounds,
            "records": self._records,
            "held": list(self._held),
            "suspicious": self._suspicious,
            "screened": self._screened,
            "posted": {k: list(v) for k, v in self._posted.items()},
            "closed": list(self._closed),
            "cursor": dict(self._cursor),
            "waiting": list(self._waiting),
            "rng": self._rng.getstate(),
            "space_rng": self._space_rng.getstate(),
            "log_dir": self.log_dir,
            "search_id": self._search_id,
            "incarnation": self._incarnation,
        }

    def set_state(self, state: dict) -> None:
        with self._lock:  # the LLM thread of overlap=True may deliver meanwhile
            self._set_state(state)

    def _set_state(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r} is not {_STATE_VERSION}")
        self._metric, self._mode = state["metric"], state["mode"]
        self._generation = state["generation"]
        self._sizes = dict(state["sizes"])
        self._handed = Counter(state["handed"])
        self._queue = list(state["queue"])
        self._pool = state["pool"]
        self._rounds = {g: self._round_from_state(r) for g, r in state["rounds"].items()}
        self._records = state["records"]
        self._held = list(state.get("held", []))
        self._suspicious = state.get("suspicious", {})
        self._screened = state.get("screened", {})
        self._posted = {k: list(v) for k, v in (state.get("posted") or {}).items()}
        self._closed = list(state.get("closed") or [])
        self._cursor = dict(state.get("cursor") or {})
        self._waiting = list(state.get("waiting") or [])
        self._rng = random.Random()
        self._rng.setstate(state["rng"])
        if state.get("space_rng") is not None:
            self._space_rng.setstate(state["space_rng"])
        self.log_dir = state["log_dir"]
        self._search_id = state.get("search_id") or self._search_id
        # The engine consults the LLM journal of the object that saved the state before asking.
        self._replay_from = state.get("incarnation")
        self._engine.close()
        self._engine = self._round_engine()
        # A crashed driver may have written generations past this state: they are written again, replacing
        # their lines in generations.jsonl and (see GenerationLog) their TensorBoard points.
        if self._log is not None:
            self._log.close()
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
        state["_engine"] = None
        state["_log"] = None
        state["_lock"] = None
        state["_mailbox"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # Defaults for what an LLMSearch pickled by an older version (a tuner.pkl) lacks.
        self.__dict__.update({"llm_reasks": 0, "_replay_from": None,
                              "_search_id": uuid.uuid4().hex[:16], "schedule": None, "screen": 0, "proposals": "llm",
                              "candidate_start": "text", "mix_alpha": 0.5, "reuse_start_score": False, "screen_margin": 0, "screen_test": "gain", "llm_budget": None, "mentor_scores": "vectors", "preset": None, "select": "metric",
                              "overlap": False, "prompt_tokens": None, "_posted": {}, "_closed": [], "_cursor": {}, "_waiting": [],
                              "_held": [], "_screened": {}, "_suspicious": {}, "_domains": [],
                              "_space_rng": random.Random()})
        for stale in ("_executor", "_future", "_budget_warned", "_restored"):  # pickled by an older version
            state.pop(stale, None)
        self.__dict__.update(state)
        self._rounds = {g: self._round_from_state(r) for g, r in self._rounds.items()}
        self._incarnation = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._mailbox = None
        self._engine = self._round_engine()

    def _round_engine(self) -> RoundEngine:
        journal = Journal(self.log_dir, self._search_id, self._incarnation, self._replay_from)
        return RoundEngine(self.llm, journal, self.llm_timeout_s, self.llm_reasks, self.llm_budget,
                           on_event=self._deliver if self.overlap else None)

    def _round_from_state(self, value: Round | dict) -> Round:
        """A saved round; older versions saved dicts, some without the round's size or new starts."""
        rnd = Round.from_state(value)
        if isinstance(value, dict):
            rnd.new_starts = int(value.get("new_starts", self.population - self.elites))
            rnd.n = int(value.get("n") or self.candidates_per_round or max(1, self.population - self.elites))
        return rnd

    # -- Tune's interface ---------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        if self._metric and metric and self._metric != metric or self._mode and mode and self._mode != mode:
            # Tune would carry on with the searcher's own metric and rank trials by the other one.
            raise ValueError(
                f"LLMSearch was made with metric={self._metric!r}, mode={self._mode!r}, but Tune was given "
                f"metric={metric!r}, mode={mode!r}; pass them in one place (LLMSearch(...) or tune.run/TuneConfig), "
                "or the same in both"
            )
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        num_samples = spec.get("num_samples")
        if isinstance(num_samples, int) and 0 <= num_samples < self.total_trials:
            raise ValueError(
                f"num_samples={num_samples} is fewer than the {self.total_trials} trials this search makes: its last "
                "generation would never complete (no best.json); pass num_samples=search.total_trials"
            )
        self._domains = space.find_domains(config)
        self._metric = self._metric or metric
        self._mode = self._mode or mode
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
        spec = self._queue.pop(0)
        generation = spec["generation"]
        self._handed[generation] += 1
        config = dict(spec)
        config["phase_seed"] = self._rng.randrange(2**31)
        # An elite keeps its chain's sampled hyperparameters; a new chain draws its own.
        hyperparameters = dict(spec.get("hyperparameters") or {})
        if self._domains and not hyperparameters:
            hyperparameters = space.sample(self._domains, self._space_rng)
        config["vector_dir"] = os.path.join(self.log_dir, "vectors")
        self._pool.add(
            Trajectory(
                trial_id=trial_id,
                generation=generation,
                origin=spec["origin"],
                prompt_init=spec["prompt_init"],
                resume_from=spec["resume_from"],
                lineage=spec.get("lineage") or trial_id,
                candidates=list(spec.get("prompt_candidates") or []),
                hyperparameters=hyperparameters,
            )
        )
        out = {k: config[k] for k in CONFIG_KEYS}
        out.update(space.nest(hyperparameters))
        plan = self._plan(generation)
        for key in ("steps", "eval_every"):
            if plan[key] is not None:
                out[key] = plan[key]
        if spec.get("prompt_candidates"):
            out.update(prompt_candidates=list(spec["prompt_candidates"]), candidate_start=self.candidate_start,
                       mix_alpha=self.mix_alpha, screen_margin=self.screen_margin, screen_test=self.screen_test)
        if spec.get("mailbox"):
            out["mailbox"] = self._mailbox_config(spec["lineage"], generation)
        if spec["resume_from"] and self.reuse_start_score:
            out["reuse_start_score"] = True
        if self.mentor_scores == "text" and self._round_follows(generation):
            out["project_best"] = True
        if self.select == "loss":
            out["keep_lowest_loss"] = True
        return out

    def _wait_if_idle(self) -> None:
        """With nothing queued and no trial of this search running, block a little (``rounds.idle_wait_s``: twice
        the longest round so far, 5 to 20 s) for the round whose candidates the next phases need, so that the
        next phase starts when the round ends and not up to 2 s later (Tune, with no trial running, polls once a
        second and sleeps a second after a trial comes). While any trial runs, ``suggest`` never waits: Tune has
        its results to handle."""
        rnd = self._rounds.get(self._generation)
        if self._queue or rnd is None or rnd.status != "pending" or not self._engine.running:
            return
        if any(t.status == "running" for t in self._pool.trajectories.values()):
            return
        self._engine.wait(rnd, idle_wait_s([r.seconds for g, r in self._rounds.items() if g != self._generation]))

    def _round_follows(self, generation: int) -> bool:
        """Whether an LLM round will read this generation's results: a next generation with new starts or
        screened candidates (the phases of the last generation feed no round)."""
        if generation + 1 >= self.generations:
            return False
        plan = self._plan(generation + 1)
        return plan["population"] > plan["elites"] or plan["screen"] * plan["elites"] > 0

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
            trajectory = self._pool.trajectories.get(trial_id)
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

    # -- bookkeeping --------------------------------------------------------------------------------------

    def _tick(self, start: float) -> None:
        # thread_time, not process_time: the LLM thread (a local model may use every core) is not ours.
        self._cpu_s += time.thread_time() - start
        self._events += 1

    @property
    def cpu_seconds_per_event(self) -> float:
        """The searcher's own CPU time per Tune event (suggest, result, complete), LLM thread excluded."""
        return self._cpu_s / max(1, self._events)

    def _record(self, trial_id: str, result: dict) -> None:
        trajectory = self._pool.trajectories.get(trial_id)
        if trajectory is None or self._metric not in result and "prompt_text" not in result:
            return
        if self._metric not in result:
            raise ValueError(
                f"trial {trial_id} reported no {self._metric!r} (the searcher's metric); it reported "
                f"{sorted(k for k in result if not k.startswith('config'))[:20]}"
            )
        value = _float(result[self._metric])
        cursor = result.get("mailbox_cursor")
        if _is_int(cursor, 0) and trajectory.lineage:
            self._cursor[trajectory.lineage] = max(cursor, self._cursor.get(trajectory.lineage, 0))
        if result.get("screen"):
            # A candidate that lost its screening: known as text, never a phase of its own.
            text = str(result.get("prompt_text", ""))[:1000]
            screened = self._screened.setdefault(trajectory.generation, [])
            entry = {"trial_id": trial_id, "text": text, "metric": value, "loss": _float(result.get("loss", math.nan))}
            if result.get("projection"):
                entry["projection"] = True
            if entry not in screened:
                screened.append(entry)
            self._pool.mark_seen(text)
            return
        if str(result.get("start") or "").startswith("candidate") and result.get("start_text"):
            trajectory.adopted = str(result["start_text"])[:1000]
            self._pool.mark_seen(trajectory.adopted)
        step = _int(result.get("step", result.get("training_iteration")), len(trajectory.evaluations))
        evaluation = Evaluation(step=step, text=_text(result.get("prompt_text")), metric=value,
                                loss=_float(result.get("loss", math.nan)))
        last = trajectory.evaluations[-1] if trajectory.evaluations else None
        if not self._pool.record(trial_id, evaluation):
            return
        if not math.isfinite(value) or not math.isfinite(evaluation.loss):
            self._warn_once(trial_id, "non_finite", "trial %s reported %s=%r, loss=%r: kept in its trajectory and "
                            "counted in the records, never ranked, an elite, the best or shown to the LLM",
                            trial_id, self._metric, value, evaluation.loss)
        moved = bool(result.get("adopted")) and last is not None and step == last.step  # a candidate won mid-phase
        if last is not None and step <= last.step and (step, evaluation.text) != (last.step, last.text) and not moved:
            self._warn_once(trial_id, "step", "trial %s reported step %d after step %d (a restart from an older "
                            "checkpoint?): both evaluations are kept", trial_id, step, last.step)
        path = result.get("vectors_path")
        if path:
            trajectory.vectors_path = str(path)
        path = result.get("loss_vectors_path")
        if path:
            trajectory.loss_vectors_path = str(path)

    def _warn_once(self, trial_id: str, kind: str, message: str, *args: Any) -> None:
        """Log a trial's suspicious result once per trial and kind; count every occurrence for the records."""
        counts = self._suspicious.setdefault(trial_id, {})
        if not counts.get(kind):
            logger.warning(message, *args)
        counts[kind] = counts.get(kind, 0) + 1

    def _seed_configs(self) -> list[dict]:
        size = max(self.population, len(self.seed_prompts))
        return [self._spec(self.seed_prompts[i % len(self.seed_prompts)], 0, "seed") for i in range(size)]

    @staticmethod
    def _spec(text: str, generation: int, origin: str, resume_from: str | None = None,
              lineage: str | None = None) -> dict:
        return {"prompt_init": text, "resume_from": resume_from, "generation": generation, "origin": origin,
                "lineage": lineage}

    def _maybe_complete_generation(self, generation: int) -> None:
        if generation != self._generation or self._handed[generation] < self._sizes[generation]:
            return
        members = [t for t in self._pool.trajectories.values() if t.generation == generation]
        if any(t.status == "running" for t in members):
            return
        # Every seed phase failing before its first report is a bad config, data spec or model, not bad luck:
        # more generations (and LLM rounds over nothing) would fail the same way.
        stopped = None
        if generation == 0 and all(t.status == "error" and not t.evaluations for t in members):
            stopped = "every phase of generation 0 failed before reporting"
            logger.error("LLMSearch stops: %s; Tune's error.txt of any trial says why (a bad config or data spec "
                         "is the usual cause)", stopped)
        self._write_record(generation, members, stopped)
        nxt = self.generations if stopped else generation + 1
        self._generation = nxt
        if nxt >= self.generations:
            self._finish()
            return
        plan = self._plan(nxt)
        self._sizes[nxt] = plan["population"]
        if self.overlap:
            self._next_overlapped(nxt)
            return
        # Elites start at once from their exact vectors, so workers are busy while the LLM thinks, unless they
        # screen candidates first: then they wait for the round (held) and take their candidates with them.
        elites = self._elite_specs(nxt, plan["elites"])
        slots = plan["screen"] * len(elites)
        if slots:
            self._held = elites
        else:
            self._queue.extend(elites)
        new_starts = plan["population"] - len(elites)
        if new_starts + slots > 0:
            self._start_round(nxt, new_starts, slots)
        else:
            self._rounds[nxt] = Round.skipped(nxt)

    def _elite_specs(self, generation: int, elites: int) -> list[dict]:
        """The best phase of each of the ``elites`` best lineages, to resume from its exact vectors."""
        specs: list[dict] = []
        chosen: set[str] = set()
        for trajectory in self._pool.ranked():
            if len(chosen) >= elites:
                break
            if trajectory.lineage in chosen:
                continue
            chosen.add(trajectory.lineage)
            best = trajectory.best(self._mode)
            # A vectors_path (a local path, or a URI in the trial's folder of Tune's storage) is not checked here:
            # the driver may not see a worker's disk. The phase that cannot read it (missing, foreign, another
            # model's) logs "cannot resume" and starts from this text instead (trainables.phase).
            spec = self._spec(best.text or trajectory.adopted or trajectory.prompt_init, generation, "elite",
                              resume_from=trajectory.vectors_path, lineage=trajectory.lineage)
            if trajectory.hyperparameters:
                spec["hyperparameters"] = dict(trajectory.hyperparameters)
            specs.append(spec)
        return specs

    def _plan(self, generation: int) -> dict:
        """What the schedule says of a generation: its steps and eval_every (None: the trial config's), how
        many candidates each of its elites screens, its population and elites."""
        entry = self.schedule[generation] if self.schedule and generation < len(self.schedule) else {}
        population = entry.get("population", self.population) if generation > 0 else self.population
        return {"steps": entry.get("steps"), "eval_every": entry.get("eval_every"),
                "screen": entry.get("screen", self.screen) if generation > 0 else 0, "population": population,
                "elites": min(population, entry.get("elites", self.elites)) if generation > 0 else self.elites}

    def _start_round(self, generation: int, new_starts: int, slots: int, lineages: list[str] | None = None) -> None:
        n = self.candidates_per_round or new_starts + 2 * slots  # ask for more than the screening needs
        descents = self.descents()[: max(self.top_k, 12)] if self.mentor_scores == "descent" else []
        if descents:
            meta_prompt = self.mentor.build_descent(descents, n, self.meta_prompt_style)
        elif self.mentor_scores in ("text", "descent"):
            meta_prompt = self.mentor.build_scored(self.text_scores()[: max(self.top_k, 12)], n, self.meta_prompt_style)
        else:
            meta_prompt = self.mentor.build(self._pool.ranked()[: self.top_k], n, self.meta_prompt_style)
        rnd = Round(generation, meta_prompt=meta_prompt, n=n, new_starts=new_starts, screen_slots=slots,
                    started=time.time(), lineages=list(lineages or []))
        if self.proposals == "perturb":  # no LLM: the candidates are random edits of the best texts
            rnd.direct = self._perturbed(n, generation, set())
        self._rounds[generation] = rnd
        # settings changed on the searcher after it was made still apply, as they did before the engine
        engine = self._engine
        engine.llm, engine.timeout_s, engine.reasks, engine.budget = (self.llm, self.llm_timeout_s, self.llm_reasks,
                                                                      self.llm_budget)
        engine.start(rnd)

    def _poll_round(self) -> None:
        """Once the current generation's round has ended: its candidates start the new phases (topped up from
        the pool) and go to the held elites to screen."""
        if self.overlap:
            self._poll_overlapped()
            return
        generation = self._generation
        rnd = self._rounds.get(generation)
        if rnd is None or rnd.status != "pending":
            return
        if not self._engine.running:  # restored without a thread (e.g. unpickled): ask again
            self._restart_round(generation)
            rnd = self._rounds[generation]
        outcome = self._engine.poll(rnd, lambda replies, n: self.mentor.parse(
            replies, n, seen=lambda t: not self._pool.is_new(t)))
        if outcome is None:
            return
        held, self._held = self._held, []
        needed = self._sizes[generation] - self._handed[generation] - len(self._queue) - len(held)
        candidates = rnd.candidates[: max(0, needed)]
        specs = [self._spec(text, generation, "llm") for text in candidates]
        # Queued elites have not started yet, so the pool would not know their texts are taken.
        taken = {normalize(c) for c in candidates} | {normalize(s["prompt_init"]) for s in self._queue + held}
        fill = self._fill(max(0, needed - len(specs)), taken)
        specs += [self._spec(text, generation, "pool") for text in fill]
        screened, screen_fill = self._assign_screening(rnd, held, generation, taken | {normalize(t) for t in fill})
        self._queue.extend(held + specs)
        error = outcome.error
        rnd.status = "done" if error is None else "budget" if error == "budget" else "failed"
        rnd.error, rnd.seconds, rnd.asks = error, round(outcome.elapsed, 3), rnd.attempt + 1
        rnd.candidates, rnd.filled, rnd.screened, rnd.screen_filled = candidates, fill, screened, screen_fill
        rnd.faults = outcome.faults
        log = logger.warning if error or rnd.faults or not (candidates or screened) else logger.info
        log("generation %d: LLM round %s after %d ask(s) in %.1fs: %d candidates, %d from the pool; faults %s, "
            "rejected %s", generation, "failed (" + error + ")" if error else "done", rnd.asks, outcome.elapsed,
            len(candidates) + len(screened), len(fill) + len(screen_fill), rnd.faults, rnd.rejected)

    def text_scores(self) -> list[Evaluation]:
        """Every text evaluated as text so far, best first, each once (its first evaluation): the step-0
        evaluation of each phase that started from text (a seed, a new start, an adopted text candidate), and
        every screened candidate and projection (``mentor_scores="text"``). Non-finite scores are left out."""
        found: list[Evaluation] = []
        for trajectory in self._pool.trajectories.values():
            first = trajectory.evaluations[0] if trajectory.evaluations else None
            if first is None or first.step != 0:
                continue
            if trajectory.adopted and self.candidate_start == "text":
                found.append(Evaluation(0, trajectory.adopted, first.loss, first.metric))
            elif not trajectory.resume_from and not trajectory.adopted:
                found.append(Evaluation(0, trajectory.prompt_init, first.loss, first.metric))
        for entries in self._screened.values():
            found += [Evaluation(0, entry["text"], entry["loss"], entry["metric"]) for entry in entries]
        sign = -1.0 if self._mode != "min" else 1.0
        unique: dict[str, Evaluation] = {}
        for e in found:
            key = normalize(e.text)
            if key and key not in unique and math.isfinite(e.metric):
                unique[key] = e
        return sorted(unique.values(), key=lambda e: (sign * e.metric, loss_key(e.loss)))

    def descents(self) -> list[Descent]:
        """What descent did to each start from text, best first by the score its chain reached (ties: lower loss):
        per lineage whose first phase started from text, that text with its step-0 score, the chain's last
        finite evaluation and its steps in all (``mentor_scores="descent"``). Chains that have not stepped yet are
        left out."""
        lineages: dict[str, list[Trajectory]] = {}
        for trajectory in self._pool.trajectories.values():
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
        sign = -1.0 if self._mode != "min" else 1.0
        return sorted(found, key=lambda d: (sign * d.end.metric, loss_key(d.end.loss)))

    def _restart_round(self, generation: int) -> None:
        rnd = self._rounds[generation]
        self._start_round(generation, rnd.new_starts, rnd.screen_slots, rnd.lineages)

    # -- overlap=True: the chain descends while the mentor thinks ------------------------------------------

    def _next_overlapped(self, generation: int) -> None:
        """Generation ``generation`` begins without waiting for its round: its elites are queued at once with the
        chain's mailbox; the round starts now, or when the round still being asked ends (its meta-prompt is then
        made from the pool as it stands). A chain lost (no finite evaluation) is replaced from the pool."""
        plan = self._plan(generation)
        elites = self._elite_specs(generation, plan["elites"])
        for spec in elites:
            spec["mailbox"] = True
        self._queue.extend(elites)
        taken = {normalize(s["prompt_init"]) for s in elites}
        fill = self._fill(plan["population"] - len(elites), taken)
        self._queue.extend(self._spec(text, generation, "pool") for text in fill)
        slots = plan["screen"] * len(elites)
        lineages = [spec["lineage"] for spec in elites]
        if not slots:
            self._rounds[generation] = Round.skipped(generation)
        elif self._pending_round() is not None:
            self._rounds[generation] = Round(generation, status="waiting", screen_slots=slots, lineages=lineages)
            self._waiting.append(generation)
        else:
            self._start_round(generation, 0, slots, lineages)
        self._box().set_asking(self._pending_round() is not None)
        self._maybe_close()

    def _pending_round(self) -> Round | None:
        pending = [r for g, r in sorted(self._rounds.items()) if r.status == "pending"]
        return pending[0] if pending else None

    def _deliver(self) -> None:
        """Called from the LLM thread when an ask ends or times out (``RoundEngine(on_event=...)``): the round's
        candidates are posted at once, even where Tune has stopped asking the searcher (a ``ConcurrencyLimiter``
        at its limit, a last phase waiting for them) and in-process without Tune."""
        with self._lock:
            if self._engine is None or self._generation >= self.generations:
                return
            try:
                self._poll_round()
            except Exception:  # never lose the LLM thread to a bug here: the next Tune event polls again
                logger.exception("could not deliver an LLM round's candidates")

    def _poll_overlapped(self) -> None:
        rnd = self._pending_round()
        if rnd is None:
            return
        if not self._engine.running:  # restored without a thread: ask again (or replay the journal)
            self._restart_round(rnd.generation)
            rnd = self._rounds[rnd.generation]
        outcome = self._engine.poll(rnd, lambda replies, n: self.mentor.parse(
            replies, n, seen=lambda t: not self._pool.is_new(t)))
        if outcome is None:
            return
        g, slots, lineages = rnd.generation, rnd.screen_slots, rnd.lineages or []
        screened = list(rnd.candidates[:slots])
        fill = self._perturbed(slots - len(screened), g, {normalize(c) for c in screened})
        messages: dict[str, list[dict]] = {}
        for i, text in enumerate(screened + fill):
            lineage = lineages[i % len(lineages)] if lineages else ""
            messages.setdefault(lineage, []).append({"id": f"{g}:{i}", "text": text, "generation": g,
                                                     "origin": "llm" if i < len(screened) else "perturb"})
            self._pool.mark_seen(text)  # a later round must not offer it again before it is screened
        for lineage, batch in messages.items():
            self._posted.setdefault(lineage, []).extend(batch)
            self._box().post(lineage, batch)
        error = outcome.error
        rnd.status = "done" if error is None else "budget" if error == "budget" else "failed"
        rnd.error, rnd.seconds, rnd.asks = error, round(outcome.elapsed, 3), rnd.attempt + 1
        rnd.candidates, rnd.filled, rnd.screened, rnd.screen_filled = [], [], screened, fill
        rnd.faults = outcome.faults
        log = logger.warning if error or rnd.faults or not screened else logger.info
        log("LLM round for generation %d %s after %d ask(s) in %.1fs: %d candidates posted to the running chain(s), "
            "%d of them perturbed; faults %s, rejected %s", g, "failed (" + error + ")" if error else "done",
            rnd.asks, outcome.elapsed, len(screened) + len(fill), len(fill), rnd.faults, rnd.rejected)
        if self._waiting:
            nxt = self._waiting.pop(0)
            waiting = self._rounds[nxt]
            self._start_round(nxt, 0, waiting.screen_slots, waiting.lineages)
        self._box().set_asking(self._pending_round() is not None)
        self._maybe_close()

    def _maybe_close(self) -> None:
        """Once the last generation has begun and no round is asked or waiting, tell every chain that no more
        candidates will come (its last phase stops waiting once it has screened what was posted)."""
        if self._generation < self.generations - 1:
            return
        if any(r.status in ("pending", "waiting") for r in self._rounds.values()):
            return
        for lineage in sorted(set(self._posted) | {t.lineage for t in self._pool.trajectories.values()
                                                   if t.generation > 0 and t.lineage}
                              | {s["lineage"] for s in self._queue if s.get("lineage")}):
            if lineage not in self._closed:
                self._closed.append(lineage)
                self._box().close(lineage)

    def _box(self):
        """The search's mailbox, made on first use; a new one (a restored search) gets every message posted
        before and the chains' closed flags again."""
        if self._mailbox is None:
            self._mailbox = make_mailbox(self._search_id)
            for lineage, messages in self._posted.items():
                self._mailbox.post(lineage, messages)
            for lineage in self._closed:
                self._mailbox.close(lineage)
        return self._mailbox

    def _mailbox_config(self, lineage: str, generation: int) -> dict:
        """The ``mailbox`` config key of a phase of ``lineage``: where to read, from which message on, and whether
        it must wait at its end for every candidate still owed (the last generation's phases)."""
        self._box()
        owed = sum(r.status in ("pending", "waiting") for r in self._rounds.values())
        return {**self._mailbox.spec, "key": lineage, "cursor": int(self._cursor.get(lineage, 0)),
                "mentor_threads": mentor_threads(self.llm),
                "drain": generation == self.generations - 1,
                "wait_s": float(self.llm_timeout_s) * (owed + 1) + 60.0}

    def _assign_screening(self, rnd: Round, held: list[dict], generation: int,
                          taken: set[str]) -> tuple[list[str], list[str]]:
        """Hand the round's candidates past the new starts to the held elites, ``screen`` each (round robin),
        topped up with perturbed texts when the LLM gave too few, so that every generation screens as many
        candidates as planned (the budget does not depend on the mentor's luck)."""
        slots = rnd.screen_slots
        if not held or not slots:
            return [], []
        rest = [c for c in rnd.candidates if normalize(c) not in taken]
        screened = rest[:slots]
        fill = self._perturbed(slots - len(screened), generation, taken | {normalize(c) for c in screened})
        texts = screened + fill
        for i, text in enumerate(texts):
            held[i % len(held)].setdefault("prompt_candidates", []).append(text)
        return screened, fill

    def _perturbed(self, n: int, generation: int, exclude: set[str]) -> list[str]:
        """``n`` new texts made by random word edits (``pool.perturb``) of the best start texts, best first."""
        if n <= 0:
            return []
        rng = random.Random(f"{self.seed}:{generation}:perturb")
        vocabulary = vocabulary_of(self.seed_prompts + [self.task_description])
        bases = []
        for trajectory in self._pool.ranked():
            text = trajectory.adopted or trajectory.prompt_init
            if text and text not in bases:
                bases.append(text)
        bases = bases or list(self.seed_prompts)
        out: list[str] = []
        keys = set(exclude)
        for i in range(50 * n):
            if len(out) >= n:
                break
            text = perturb(bases[i % len(bases)], rng, vocabulary)
            key = normalize(text)
            if key and key not in keys and self._pool.is_new(text) and len(text.split()) <= self.max_prompt_words:
                keys.add(key)
                out.append(text)
        while len(out) < n:  # tiny vocabularies: repeats are still screened (a repeat costs what a new one does)
            out.append(bases[len(out) % len(bases)])
        return out

    def _fill(self, n: int, exclude: set[str]) -> list[str]:
        """Top-up when the LLM gives too few: unstarted projections of the best phases, then unused seeds,
        then the best texts again (a phase from a repeated text still differs by its seed)."""
        if n <= 0:
            return []
        texts = self._pool.fill_texts(exclude)
        texts += [s for s in self.seed_prompts if self._pool.is_new(s) and normalize(s) not in exclude]
        ranked = [t.best(self._mode).text or t.prompt_init for t in self._pool.ranked()] or list(self.seed_prompts)
        while len(texts) < n:
            texts.append(ranked[len(texts) % len(ranked)])
        return texts[:n]

    def _write_record(self, generation: int, members: list[Trajectory], stopped: str | None = None) -> None:
        scores = [s for s in (self._pool.score(t) for t in members) if s is not None]
        best = self._pool.ranked(generation)
        overall = self._pool.best()
        rnd = self._rounds.get(generation)
        record = {
            "search_id": self._search_id,
            "generation": generation,
            "trials": len(members),
            "errored": sum(t.status == "error" for t in members),
            "origins": dict(Counter(t.origin for t in members)),
            "best_metric": best[0].best(self._mode).metric if best else None,
            "mean_metric": sum(scores) / len(scores) if scores else None,
            "best_prompt": best[0].best(self._mode).text if best else None,
            "best_start": best[0].prompt_init if best else None,
            "best_hyperparameters": dict(best[0].hyperparameters) if best else None,
            "best_so_far": overall.best(self._mode).metric if overall else None,
            "starts": [t.prompt_init for t in members],
            "screened": len(self._screened.get(generation, [])) + sum(bool(t.adopted) for t in members),
            "adopted": [t.adopted for t in members if t.adopted],
            "non_finite": sum(self._suspicious.get(t.trial_id, {}).get("non_finite", 0) for t in members),
            "llm": rnd.record() if rnd is not None else None,
        }
        if self.llm_budget is not None:
            record["llm_budget"] = {"limits": self.llm_budget.limits(),
                                    "spent": self.llm_budget.spent(getattr(self.llm, "usage", None)),
                                    "reached": rnd is not None and rnd.status == "budget"}
        if stopped:
            record["stopped"] = stopped
        self._records.append(record)
        try:
            self._logger().write_generation(record, self._metric)
            tables.write_csv(os.path.join(self.log_dir, tables.EVALUATIONS_FILE), self.evaluation_rows())
            tables.write_csv(os.path.join(self.log_dir, tables.GENERATIONS_FILE), self.records)
        except OSError:
            logger.exception("could not write the generation summary to %s", self.log_dir)

    def _logger(self) -> GenerationLog:
        if self._log is None:
            self._log = GenerationLog(self.log_dir)
        return self._log

    def _finish(self) -> None:
        if self.overlap:  # rounds that ended after their generation's record was written: written again
            for record in self._records:
                rnd = self._rounds.get(record["generation"])
                if rnd is not None and record.get("llm") != rnd.record():
                    record["llm"] = rnd.record()
                    try:
                        self._logger().write_generation(record, self._metric)
                    except OSError:
                        logger.exception("could not write the generation summary to %s", self.log_dir)
            try:
                tables.write_csv(os.path.join(self.log_dir, tables.GENERATIONS_FILE), self.records)
            except OSError:
                logger.exception("could not write the generations to %s", self.log_dir)
            if self._mailbox is not None:
                self._mailbox.shutdown()
                self._mailbox = None
        best = self.best()
        try:
            if best is not None:
                self._logger().write_best(best)
            self._logger().close()
        except OSError:
            logger.exception("could not write best.json to %s", self.log_dir)
        self._engine.close()

    # -- results ------------------------------------------------------------------------------------------

    def best(self) -> dict[str, Any] | None:
        """The final prompt so far, chosen as ``select`` says: its prompt text, metric, loss, step, vectors'
        path (``None`` where the phase kept no vectors for it) and where its phase started."""
        if self.select == "loss":
            trajectory, e = self._pool.lowest_loss() or (None, None)
            path = trajectory.loss_vectors_path if trajectory is not None else None
        else:
            trajectory = self._pool.best()
            e = trajectory.best(self._mode) if trajectory is not None else None
            path = trajectory.vectors_path if trajectory is not None else None
        if trajectory is None:
            return None
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
        return list(self._records)

    @property
    def trajectories(self) -> list[Trajectory]:
        return list(self._pool.trajectories.values())

    def dry_run(self) -> dict:
        """What this search would ask of its LLM, without asking: the meta-prompt of round 1 (generation 0's
        scores are not known before it runs, so the seed prompts are shown with placeholder scores of 0), the
        rounds, and upper bounds on calls and tokens (every round asking ``1 + llm_reasks`` times, each ask
        retried as often as the LLM retries, every meta-prompt as long as ``top_k`` trajectories of prompts at
        the mentor's length cap can make it, every reply at the LLM's token cap). Tokens are bounded by the
        meta-prompt's UTF-8 bytes plus 64 for a chat template: no tokenizer gives more than one token per byte
        of text. ``None`` where the LLM has no token cap (``max_tokens`` / ``max_new_tokens``)."""
        rounds = []
        for g in range(1, self.generations):
            plan = self._plan(g)
            slots = plan["screen"] * plan["elites"]
            new_starts = plan["population"] - plan["elites"]
            if new_starts + slots > 0:
                rounds.append(self.candidates_per_round or new_starts + 2 * slots)
        if self.proposals == "perturb":
            rounds = []
        seeds = [Trajectory(f"seed{i}", 0, "seed", text, evaluations=[Evaluation(0, text, 0.0, 0.0)])
                 for i, text in enumerate(self.seed_prompts)]
        style = self.meta_prompt_style
        faithful = self.mentor_scores in ("text", "descent")  # "descent" shows text scores before any descent
        shown = max(self.top_k, 12)  # texts a text-scored meta-prompt lists (_start_round)
        if faithful:
            example = self.mentor.build_scored([t.evaluations[0] for t in seeds][:shown], rounds[0] if rounds else 1,
                                               style)
        else:
            example = self.mentor.build(seeds[: self.top_k], rounds[0] if rounds else 1, style)

        def long(i: int, s: int) -> str:  # distinct texts (the mentor shows a text once), clipped at 160
            return f"{i:03d} {s:03d} " + "w" * 152

        k = self.mentor.points_per_trajectory
        widest = [Trajectory(f"w{i}", 0, "seed", long(i, k),
                             evaluations=[Evaluation(s, long(i, s), -1e9, -1e9) for s in range(k)])
                  for i in range(self.top_k)]
        calls_per_ask = 1 + int(getattr(self.llm, "retries", 0) or 0)
        asks = len(rounds) * (1 + self.llm_reasks)
        def meta(n: int) -> str:
            if self.mentor_scores == "descent":  # the longer of the two meta-prompts it may send
                return max(self.mentor.build_scored([Evaluation(0, long(i, 0), -1e9, -1e9) for i in range(shown)], n,
                                                    style),
                           self.mentor.build_descent([Descent(Evaluation(0, long(i, 0), -1e9, -1e9),
                                                              Evaluation(10**9, long(i, 1), -1e9, -1e9), 10**9)
                                                      for i in range(shown)], n, style), key=len)
            if faithful:
                return self.mentor.build_scored([Evaluation(0, long(i, 0), -1e9, -1e9) for i in range(shown)], n, style)
            return self.mentor.build(widest, n, style)

        prompt_bound = max((len(meta(n).encode("utf-8")) + 64 for n in rounds), default=0)
        completion = [self._completion_cap(n) for n in rounds]
        max_calls = asks * calls_per_ask
        out = {"rounds": len(rounds), "candidates_per_round": rounds, "max_calls": max_calls,
               "max_prompt_tokens_per_call": prompt_bound,
               "max_completion_tokens_per_call": max(completion, default=0) if None not in completion else None,
               "meta_prompt": example}
        out["max_tokens"] = (None if out["max_completion_tokens_per_call"] is None
                             else max_calls * (prompt_bound + out["max_completion_tokens_per_call"]))
        budget = self.llm_budget
        priced = budget is not None and None not in (budget.prompt_price, budget.completion_price)
        if priced and out["max_tokens"] is not None:
            out["max_cost"] = round(max_calls * (prompt_bound * budget.prompt_price + out[
                "max_completion_tokens_per_call"] * budget.completion_price) / 1000.0, 6)
        if budget is not None:
            out["llm_budget"] = budget.limits()
        return out

    def _completion_cap(self, n: int) -> int | None:
        if getattr(self.llm, "max_tokens", None):  # one reply (chat endpoints)
            return int(self.llm.max_tokens)
        per = getattr(self.llm, "max_new_tokens", None)
        if not per:
            return None
        if self.meta_prompt_style == "completion":  # one sampled continuation per candidate
            return int(per) * n
        return max(int(per), 16 * n)

    def evaluation_rows(self) -> list[dict]:
        """Every evaluation the trials reported, one dict each (also ``<log_dir>/evaluations.csv``): trial,
        generation, origin, status, start text, lineage, adopted candidate, step, projected text, the metric
        (under its own name), loss and the trial's sampled hyperparameters."""
        return tables.evaluation_rows(self._pool.trajectories.values(), self._metric, self._search_id)

    def dataframe(self, kind: str = "evaluations"):
        """``evaluation_rows()`` (``kind="evaluations"``) or ``records`` (``"generations"``) as a pandas DataFrame."""
        if kind not in ("evaluations", "generations"):
            raise ValueError(f"kind must be 'evaluations' or 'generations', got {kind!r}")
        return tables.dataframe(self.evaluation_rows() if kind == "evaluations" else self.records)

    def round_spans(self) -> list[tuple[float, float]]:
        """``(start, end)`` wall-clock times of every LLM round asked (``timeline.round_wait``)."""
        return [(r.started, r.started + r.seconds) for r in self._rounds.values()
                if r.started and isinstance(r.seconds, (int, float))]

    @property
    def llm_seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self._rounds.values())


def mentor_threads(llm: Any) -> int:
    """CPU threads the mentor computes with on the driver's node, which a phase on that node leaves it while a
    round is asked (``overlap=True``): a llama.cpp server this search started (``LlamaCppChat.threads``), 1 for a
    model in the driver's process (``LocalLLM``), 0 for an endpoint elsewhere (``OpenAIChat``)."""
    inner = getattr(llm, "llm", llm)  # CachedLLM wraps the mentor
    threads = getattr(inner, "threads", None)
    if _is_int(threads, 0):
        return threads
    return 1 if type(inner).__name__ == "LocalLLM" else 0


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _text(value: Any, limit: int = 1000) -> str:
    """A reported prompt text as the searcher keeps it: a string, at most ``limit`` characters."""
    return "" if value is None else str(value)[:limit]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_int(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


# LLMSearch's plain arguments: (name, is it valid, what it must be).
_ARGUMENT_CHECKS = (
    ("population", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("screen", lambda v: _is_int(v, 0), "an integer >= 0"),
    ("proposals", lambda v: v in PROPOSALS, f"one of {PROPOSALS}"),
    ("candidate_start", lambda v: v in ("text", "mix"), "'text' or 'mix'"),
    ("mix_alpha", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
    ("screen_margin", lambda v: _is_number(v) and v >= 0, "a number of validation examples >= 0"),
    ("screen_test", lambda v: v in ("gain", "paired"), "'gain' or 'paired'"),
    ("mentor_scores", lambda v: v in MENTOR_SCORES, f"one of {MENTOR_SCORES}"),
    ("select", lambda v: v in SELECT, f"one of {SELECT}"),
    ("top_k", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("candidates_per_round", lambda v: v is None or isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("max_prompt_words", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("prompt_tokens", lambda v: v is None or _is_int(v, 1), "None or an integer >= 1"),
    ("llm_timeout_s", lambda v: isinstance(v, (int, float)) and v > 0, "a number of seconds > 0"),
    ("llm_reasks", lambda v: _is_int(v, 0), "an integer >= 0"),
    ("overlap", lambda v: isinstance(v, bool), "True or False"),
)


def _check_arguments(a: dict) -> dict:
    """``LLMSearch``'s arguments checked (a ``ValueError`` names the first bad one); returns the derived
    values: ``seed_prompts`` (stripped, non-empty), ``generations``, ``schedule``, ``llm_budget``,
    ``meta_prompt_style``."""
    mode, metric, llm = a["mode"], a["metric"], a["llm"]
    if mode is not None and mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ValueError(f"metric must be a non-empty string, got {metric!r}")
    if not hasattr(llm, "propose"):
        raise ValueError(f"llm must have propose(meta_prompt, n), e.g. LocalLLM() or OpenAIChat(...); got {llm!r}")
    if isinstance(a["seed_prompts"], str):
        raise ValueError("seed_prompts must be a list of prompts, not one string")
    seeds = [s.strip() for s in (a["seed_prompts"] or []) if isinstance(s, str) and s.strip()]
    if not seeds:
        raise ValueError("seed_prompts must hold at least one non-empty prompt, e.g. ['a photo of a']")
    for name, valid, what in _ARGUMENT_CHECKS[:1]:
        if not valid(a[name]):
            raise ValueError(f"{name} must be {what}, got {a[name]!r}")
    schedule, generations = _check_schedule(a["schedule"]), a["generations"]
    if schedule is not None:
        if generations is not None and generations != len(schedule):
            raise ValueError(f"generations={generations} but schedule has {len(schedule)} entries (one per "
                             "generation); pass one of them")
        generations = len(schedule)
    generations = 3 if generations is None else generations
    if not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be an integer >= 1, got {generations!r}")
    if not isinstance(a["elites"], int) or not 0 <= a["elites"] <= a["population"]:
        raise ValueError(f"elites must be an integer in [0, population] = [0, {a['population']}], got {a['elites']!r}")
    for name, valid, what in _ARGUMENT_CHECKS[1:]:
        if not valid(a[name]):
            raise ValueError(f"{name} must be {what}, got {a[name]!r}")
    if a["overlap"] and a["elites"] != a["population"]:
        raise ValueError(f"overlap=True needs elites == population (every phase continues a chain; a new start "
                         f"waits for its round's text anyway), got elites={a['elites']!r}, "
                         f"population={a['population']!r}")
    narrowed = [i for i, e in enumerate(schedule or []) if i and e.get("population", a["population"]) != e.get(
        "elites", a["elites"])]
    if a["overlap"] and narrowed:
        raise ValueError(f"overlap=True needs elites == population in every generation, and schedule[{narrowed[0]}] "
                         f"has population {schedule[narrowed[0]].get('population', a['population'])} and elites "
                         f"{schedule[narrowed[0]].get('elites', a['elites'])}")
    llm_budget = LLMBudget.parse(a["llm_budget"])
    log_dir = a["log_dir"]
    if log_dir is not None and (not isinstance(log_dir, str) or "://" in log_dir):
        raise ValueError(
            f"log_dir must be a local filesystem path (the driver's), got {log_dir!r}; a URI such as s3://... "
            "belongs in Tune's storage_path, where the phases then keep their vectors"
        )
    style = a["meta_prompt_style"] or getattr(llm, "style", "chat")
    if style not in ("chat", "completion"):
        raise ValueError(f"meta_prompt_style must be 'chat' or 'completion', got {style!r}")
    return {"seed_prompts": seeds, "generations": generations, "schedule": schedule, "llm_budget": llm_budget,
            "meta_prompt_style": style}


_SCHEDULE_KEYS = {"steps", "screen", "eval_every", "population", "elites"}


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
