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

import concurrent.futures
import logging
import math
import os
import pickle
import random
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from ray.tune.search import Searcher

from ray_llm_search.llm.base import LLM, LLMError
from ray_llm_search.mentor import Mentor, Parsed
from ray_llm_search.pool import Evaluation, PromptPool, Trajectory, normalize
from ray_llm_search.tensorboard import GenerationLog, append_journal, read_journal

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
# First wait before asking again after a reply with no usable prompt; doubles per further ask, at most 30 s.
REASK_BACKOFF_S = 1.0
# Keys the searcher adds to each trial's config (DESIGN.md, first contract table).
CONFIG_KEYS = ("prompt_init", "resume_from", "generation", "origin", "phase_seed", "vector_dir")


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
        log_dir: where generation summaries, TensorBoard events, ``best.json`` and the prompt vectors go;
            default ``~/ray_results/llm_search/<UTC time>``. On a multi-node cluster it must be a path all
            nodes share, like Tune's ``storage_path``.
        llm_timeout_s: a round that takes longer (all its asks together) is abandoned and filled from the pool.
        llm_reasks: when a reply holds no usable prompt (empty, chatter, overlong, or only prompts already
            tried), ask again up to this many times, after 1 s, 2 s, ... (``REASK_BACKOFF_S``), within
            ``llm_timeout_s``; transport faults are retried by the LLM client itself (``OpenAIChat(retries=)``).
        meta_prompt_style: ``"chat"`` or ``"completion"``; default: the LLM's ``style``.

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
        generations: int = 3,
        elites: int = 1,
        top_k: int = 8,
        candidates_per_round: int | None = None,
        max_prompt_words: int = 16,
        seed: int = 0,
        log_dir: str | None = None,
        llm_timeout_s: float = 900.0,
        meta_prompt_style: str | None = None,
        llm_reasks: int = 0,
    ) -> None:
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"metric must be a non-empty string, got {metric!r}")
        if not hasattr(llm, "propose"):
            raise ValueError(f"llm must have propose(meta_prompt, n), e.g. LocalLLM() or OpenAIChat(...); got {llm!r}")
        if isinstance(seed_prompts, str):
            raise ValueError("seed_prompts must be a list of prompts, not one string")
        seeds = [s.strip() for s in (seed_prompts or []) if isinstance(s, str) and s.strip()]
        if not seeds:
            raise ValueError("seed_prompts must hold at least one non-empty prompt, e.g. ['a photo of a']")
        if not isinstance(population, int) or population < 1:
            raise ValueError(f"population must be an integer >= 1, got {population!r}")
        if not isinstance(generations, int) or generations < 1:
            raise ValueError(f"generations must be an integer >= 1, got {generations!r}")
        if not isinstance(elites, int) or not 0 <= elites < population:
            raise ValueError(f"elites must be an integer in [0, population) = [0, {population}), got {elites!r}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if candidates_per_round is None:
            candidates_per_round = population - elites
        if not isinstance(candidates_per_round, int) or candidates_per_round < 1:
            raise ValueError(f"candidates_per_round must be an integer >= 1, got {candidates_per_round!r}")
        if not isinstance(max_prompt_words, int) or max_prompt_words < 1:
            raise ValueError(f"max_prompt_words must be an integer >= 1, got {max_prompt_words!r}")
        if not isinstance(llm_timeout_s, (int, float)) or not llm_timeout_s > 0:
            raise ValueError(f"llm_timeout_s must be a number of seconds > 0, got {llm_timeout_s!r}")
        if isinstance(llm_reasks, bool) or not isinstance(llm_reasks, int) or llm_reasks < 0:
            raise ValueError(f"llm_reasks must be an integer >= 0, got {llm_reasks!r}")
        if log_dir is not None and (not isinstance(log_dir, str) or "://" in log_dir):
            raise ValueError(
                f"log_dir must be a filesystem path (on a cluster: a shared mount every node sees), got {log_dir!r}; "
                "a URI such as s3://... belongs in Tune's storage_path"
            )
        style = meta_prompt_style or getattr(llm, "style", "chat")
        if style not in ("chat", "completion"):
            raise ValueError(f"meta_prompt_style must be 'chat' or 'completion', got {style!r}")
        super().__init__(metric=metric, mode=mode)
        self.llm = llm
        self.task_description = task_description
        self.seed_prompts = seeds
        self.population = population
        self.generations = generations
        self.elites = elites
        self.top_k = top_k
        self.candidates_per_round = candidates_per_round
        self.max_prompt_words = max_prompt_words
        self.seed = seed
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
        self.log_dir = os.path.abspath(os.path.expanduser(log_dir or f"~/ray_results/llm_search/{stamp}"))
        self.llm_timeout_s = llm_timeout_s
        self.llm_reasks = llm_reasks
        self.meta_prompt_style = style
        self._reset_state()
        # This object's own id (a pickled copy gets a new one): a restore replays only the journaled answers of
        # the object that saved the state, never those a copy of it asked for on its own.
        self._incarnation = uuid.uuid4().hex[:12]
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._future: concurrent.futures.Future | None = None
        self._log: GenerationLog | None = None

    # -- state -------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._generation = 0
        self._sizes = {0: max(self.population, len(self.seed_prompts))}
        self._handed: Counter = Counter()  # trials handed out per generation
        self._queue: list[dict] = self._seed_configs()
        self._pool = PromptPool(self._mode or "max")
        self._rounds: dict[int, dict] = {}  # generation -> what its LLM round asked, got and kept
        self._records: list[dict] = []  # one summary per completed generation
        self._rng = random.Random(self.seed)
        self._cpu_s = 0.0
        self._events = 0
        # Names this search in generations.jsonl and the LLM journal, so that a restored search recognises its
        # own records in a log_dir that other searches may share.
        self._search_id = uuid.uuid4().hex[:16]
        self._restored = False  # set by set_state: consult the LLM journal before asking
        self._replay_from: str | None = None  # the incarnation whose journaled answers a restore replays

    @property
    def total_trials(self) -> int:
        """Trials this search creates; pass it (or more) as Tune's ``num_samples``."""
        return max(self.population, len(self.seed_prompts)) + self.population * (self.generations - 1)

    @property
    def mentor(self) -> Mentor:
        return Mentor(self.task_description, self._metric or "metric", self._mode or "max",
                      max_words=self.max_prompt_words)

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
            "rng": self._rng.getstate(),
            "log_dir": self.log_dir,
            "search_id": self._search_id,
            "incarnation": self._incarnation,
        }

    def set_state(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r} is not {_STATE_VERSION}")
        self._metric, self._mode = state["metric"], state["mode"]
        self._generation = state["generation"]
        self._sizes = dict(state["sizes"])
        self._handed = Counter(state["handed"])
        self._queue = list(state["queue"])
        self._pool = state["pool"]
        self._rounds = state["rounds"]
        self._records = state["records"]
        self._rng = random.Random()
        self._rng.setstate(state["rng"])
        self.log_dir = state["log_dir"]
        self._search_id = state.get("search_id") or self._search_id
        self._future = None
        self._restored = True
        self._replay_from = state.get("incarnation")
        # A crashed driver may have written generations past this state: they are written again, replacing
        # their lines in generations.jsonl and (see GenerationLog) their TensorBoard points.
        if self._log is not None:
            self._log.close()
        self._log = None
        # A round still running when the state was saved is asked again, unless the crashed run journaled its
        # answer (see _ask); finished rounds are never asked again.
        pending = self._rounds.get(self._generation)
        if pending is not None and pending.get("status") == "pending":
            self._start_round(self._generation)

    def save(self, checkpoint_path: str) -> None:
        tmp = checkpoint_path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.get_state(), f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __getstate__(self) -> dict:
        # Tune pickles the search algorithm with the experiment: leave out threads and open writers.
        state = dict(self.__dict__)
        state["_executor"] = None
        state["_future"] = None
        state["_log"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # Defaults for what an LLMSearch pickled by an older version (a tuner.pkl) lacks.
        self.__dict__.update({"llm_reasks": 0, "_restored": False, "_replay_from": None,
                              "_search_id": uuid.uuid4().hex[:16]})
        self.__dict__.update(state)
        self._incarnation = uuid.uuid4().hex[:12]

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
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        self._pool.mode = self._mode or "max"
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        start = time.thread_time()
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
        config["vector_dir"] = os.path.join(self.log_dir, "vectors")
        self._pool.add(
            Trajectory(
                trial_id=trial_id,
                generation=generation,
                origin=spec["origin"],
                prompt_init=spec["prompt_init"],
                resume_from=spec["resume_from"],
                lineage=spec.get("lineage") or trial_id,
            )
        )
        return {k: config[k] for k in CONFIG_KEYS}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        start = time.thread_time()
        try:
            self._record(trial_id, result)
        finally:
            self._tick(start)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
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
        step = result.get("step", result.get("training_iteration", len(trajectory.evaluations)))
        self._pool.record(
            trial_id,
            Evaluation(
                step=int(step),
                text=str(result.get("prompt_text", ""))[:1000],
                loss=_float(result.get("loss", math.nan)),
                metric=value,
            ),
        )
        if result.get("vectors_path"):
            trajectory.vectors_path = str(result["vectors_path"])

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
        self._sizes[nxt] = self.population
        # Elites start at once from their exact vectors, so workers are busy while the LLM thinks.
        chosen: set[str] = set()
        for trajectory in self._pool.ranked():
            if len(chosen) >= self.elites:
                break
            if trajectory.lineage in chosen:
                continue
            chosen.add(trajectory.lineage)
            best = trajectory.best(self._mode)
            self._queue.append(
                self._spec(best.text or trajectory.prompt_init, nxt, "elite",
                           resume_from=trajectory.vectors_path, lineage=trajectory.lineage)
            )
        self._start_round(nxt)

    def _start_round(self, generation: int) -> None:
        shown = self._pool.ranked()[: self.top_k]
        meta_prompt = self.mentor.build(shown, self.candidates_per_round, self.meta_prompt_style)
        self._rounds[generation] = {
            "generation": generation,
            "status": "pending",
            "meta_prompt": meta_prompt,
            "started": time.time(),
            "attempt": 0,
            "replies": [],
            "candidates": [],
            "rejected": {},
            "faults_before": dict(getattr(self.llm, "faults", {}) or {}),
        }
        self._ask(generation)

    def _ask(self, generation: int, delay_s: float = 0.0) -> None:
        """Hand the round's current ask to the background thread, or, in a restored search, replay the answer
        that the crashed driver journaled, so that the LLM is not asked twice for the same round."""
        info = self._rounds[generation]
        attempt = info["attempt"]
        entry = None
        if self._restored and self._replay_from:
            entry = read_journal(self.log_dir, self._search_id, self._replay_from).get((generation, attempt))
        if entry is not None:
            logger.info("LLM round %d (ask %d): replaying the answer journaled before the restore", generation,
                        attempt + 1)
            self._future = concurrent.futures.Future()
            if entry.get("error"):
                self._future.set_exception(LLMError(entry["error"], entry.get("message") or "journaled failure"))
            else:
                self._future.set_result(list(entry.get("replies") or []))
            info["replayed"] = info.get("replayed", 0) + 1
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-search")
        self._future = self._executor.submit(self._call_llm, generation, attempt, info["meta_prompt"],
                                             self.candidates_per_round, delay_s)

    def _call_llm(self, generation: int, attempt: int, meta_prompt: str, n: int, delay_s: float) -> list[str]:
        """Runs in the background thread: one ask, its outcome journaled before the searcher sees it."""
        if delay_s > 0:
            time.sleep(delay_s)
        entry = {"search_id": self._search_id, "incarnation": self._incarnation, "generation": generation,
                 "attempt": attempt}
        try:
            result = self.llm.propose(meta_prompt, n)
            # A bare string is one reply; iterating it would make every character a candidate.
            replies = [result] if isinstance(result, str) else [r for r in result if isinstance(r, str)]
        except LLMError as e:
            append_journal(self.log_dir, {**entry, "error": e.kind, "message": str(e)[:300]})
            raise
        except Exception as e:
            append_journal(self.log_dir, {**entry, "error": type(e).__name__, "message": str(e)[:300]})
            raise
        append_journal(self.log_dir, {**entry, "replies": replies})
        return replies

    def _poll_round(self) -> None:
        generation = self._generation
        info = self._rounds.get(generation)
        if info is None or info["status"] != "pending":
            return
        if self._future is None:  # restored without a thread (e.g. unpickled): ask again
            self._start_round(generation)
            info = self._rounds[generation]
        elapsed = time.time() - info["started"]
        if not self._future.done() and elapsed < self.llm_timeout_s:
            return
        replies: list[str] = []
        error = None
        if not self._future.done():
            error = "timeout"
            logger.warning("LLM round %d took over %gs; filling from the pool", generation, self.llm_timeout_s)
            self._future = None  # the thread's late answer is ignored
            # Its one worker may hang on: the next round gets a fresh thread instead of queueing behind it.
            self._executor.shutdown(wait=False)
            self._executor = None
        else:
            try:
                replies = self._future.result()
            except LLMError as e:
                error = e.kind
                logger.warning("LLM round %d failed (%s); filling from the pool", generation, e)
            except Exception as e:  # any bug or fault in a user's LLM must not end the search
                error = type(e).__name__
                logger.exception("LLM round %d raised; filling from the pool", generation)
        # A failed ask has no reply to reject: its faults are counted by kind instead.
        parsed = Parsed() if error else self.mentor.parse(replies, self.candidates_per_round,
                                                          seen=lambda t: not self._pool.is_new(t))
        info["replies"] = info.get("replies", []) + [r[:4000] for r in replies]
        info["candidates"] = info.get("candidates", []) + parsed.candidates
        info["rejected"] = dict(Counter(info.get("rejected") or {}) + parsed.rejected)
        attempt = info.get("attempt", 0)
        delay = min(30.0, REASK_BACKOFF_S * 2**attempt)
        if error is None and not info["candidates"] and attempt < self.llm_reasks:
            if elapsed + delay < self.llm_timeout_s:
                info["attempt"] = attempt + 1
                logger.warning("LLM round %d: no usable prompt in its reply (rejected %s); asking again in %.1fs",
                               generation, dict(parsed.rejected), delay)
                self._ask(generation, delay)
                return
        faults = Counter(getattr(self.llm, "faults", {}) or {})
        faults.subtract(info.pop("faults_before", {}))
        if error == "timeout":
            faults["round_timeout"] += 1
        needed = self._sizes[generation] - self._handed[generation] - len(self._queue)
        candidates = info["candidates"][: max(0, needed)]
        specs = [self._spec(text, generation, "llm") for text in candidates]
        # Queued elites have not started yet, so the pool would not know their texts are taken.
        taken = {normalize(c) for c in candidates} | {normalize(s["prompt_init"]) for s in self._queue}
        fill = self._fill(max(0, needed - len(specs)), taken)
        specs += [self._spec(text, generation, "pool") for text in fill]
        self._queue.extend(specs)
        faults = {k: v for k, v in faults.items() if v > 0}
        info.update(
            status="done" if error is None else "failed",
            error=error,
            seconds=round(elapsed, 3),
            asks=info.pop("attempt", 0) + 1,
            candidates=candidates,
            filled=fill,
            faults=faults,
        )
        log = logger.warning if error or faults or not candidates else logger.info
        log("generation %d: LLM round %s after %d ask(s) in %.1fs: %d candidates, %d from the pool; faults %s, "
            "rejected %s", generation, "failed (" + error + ")" if error else "done", info["asks"], elapsed,
            len(candidates), len(fill), faults, info["rejected"])

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
        info = self._rounds.get(generation, {})
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
            "best_so_far": overall.best(self._mode).metric if overall else None,
            "starts": [t.prompt_init for t in members],
            "llm": {k: info.get(k) for k in ("status", "error", "seconds", "asks", "meta_prompt", "replies",
                                              "candidates", "filled", "rejected", "faults") if k in info} or None,
        }
        if stopped:
            record["stopped"] = stopped
        self._records.append(record)
        try:
            self._logger().write_generation(record, self._metric)
        except OSError:
            logger.exception("could not write the generation summary to %s", self.log_dir)

    def _logger(self) -> GenerationLog:
        if self._log is None:
            self._log = GenerationLog(self.log_dir)
        return self._log

    def _finish(self) -> None:
        best = self.best()
        try:
            if best is not None:
                self._logger().write_best(best)
            self._logger().close()
        except OSError:
            logger.exception("could not write best.json to %s", self.log_dir)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- results ------------------------------------------------------------------------------------------

    def best(self) -> dict[str, Any] | None:
        """The best phase so far: its prompt text, metric, loss, step, vectors' path and where it started."""
        trajectory = self._pool.best()
        if trajectory is None:
            return None
        e = trajectory.best(self._mode)
        return {
            "prompt_text": e.text,
            "metric": self._metric,
            "value": e.metric,
            "loss": e.loss,
            "step": e.step,
            "vectors_path": trajectory.vectors_path,
            "trial_id": trajectory.trial_id,
            "generation": trajectory.generation,
            "origin": trajectory.origin,
            "prompt_init": trajectory.prompt_init,
        }

    @property
    def records(self) -> list[dict]:
        """One summary per completed generation (also in ``<log_dir>/generations.jsonl``)."""
        return list(self._records)

    @property
    def trajectories(self) -> list[Trajectory]:
        return list(self._pool.trajectories.values())

    @property
    def llm_seconds(self) -> float:
        return sum(r.get("seconds") or 0.0 for r in self._rounds.values())


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
