"""The generation policy of ``LLMSearch``: which phases each generation runs and from what (seeds, elites resumed
from their exact vectors, the LLM's candidates, fill-ins from the pool), which candidates each elite screens, when
an LLM round starts and what happens when it ends (``overlap=True``: its candidates posted to the running chains),
and each generation's record.

``GenerationPolicy`` is a mixin of ``LLMSearch`` (``ray_llm_search.searcher``, the Tune adapter): its state is the
searcher's (saved with ``get_state``), and it reads the design's settings from the searcher's attributes (a
resolved ``SearchConfig``). It never talks to Tune.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from ray_llm_search import contract, records, space
from ray_llm_search import pool as pools
from ray_llm_search.mailbox import make_mailbox
from ray_llm_search.mentor import Descent
from ray_llm_search.pool import Evaluation, PromptPool, Trajectory, normalize, vocabulary_of
from ray_llm_search.records import GenerationLog, generation_record
from ray_llm_search.rounds import Round, idle_wait_s

logger = logging.getLogger("ray_llm_search.searcher")


class GenerationPolicy:
    """What each generation runs (see the module docstring); mixed into ``LLMSearch``."""

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

    def _policy_state(self) -> dict:
        """The policy's part of the searcher's saved state (plain data)."""
        return {
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
        }

    def _load_policy_state(self, state: dict) -> None:
        """``_policy_state()``'s data taken back (keys added by later versions may be missing)."""
        self._generation, self._pool, self._records = state["generation"], state["pool"], state["records"]
        self._queue, self._held = list(state["queue"]), list(state.get("held", []))
        self._sizes, self._handed = dict(state["sizes"]), Counter(state["handed"])
        self._rounds = {g: self._round_from_state(r) for g, r in state["rounds"].items()}
        self._suspicious, self._screened = state.get("suspicious", {}), state.get("screened", {})
        self._posted = {k: list(v) for k, v in (state.get("posted") or {}).items()}
        self._closed, self._cursor = list(state.get("closed") or []), dict(state.get("cursor") or {})
        self._waiting = list(state.get("waiting") or [])
        self._rng = random.Random()
        self._rng.setstate(state["rng"])
        if state.get("space_rng") is not None:
            self._space_rng.setstate(state["space_rng"])

    def _round_from_state(self, value: Round | dict) -> Round:
        """A saved round; older versions saved dicts, some without the round's size or new starts."""
        rnd = Round.from_state(value)
        if isinstance(value, dict):
            rnd.new_starts = int(value.get("new_starts", self.population - self.elites))
            rnd.n = int(value.get("n") or self.candidates_per_round or max(1, self.population - self.elites))
        return rnd

    def _seed_configs(self) -> list[dict]:
        size = max(self.population, len(self.seed_prompts))
        return [self._spec(self.seed_prompts[i % len(self.seed_prompts)], 0, "seed") for i in range(size)]

    @staticmethod
    def _spec(text: str, generation: int, origin: str, resume_from: str | None = None,
              lineage: str | None = None) -> dict:
        return {"prompt_init": text, "resume_from": resume_from, "generation": generation, "origin": origin,
                "lineage": lineage}

    def _plan(self, generation: int) -> dict:
        """What the schedule says of a generation: its steps and eval_every (None: the trial config's), how
        many candidates each of its elites screens, its population and elites."""
        entry = self.schedule[generation] if self.schedule and generation < len(self.schedule) else {}
        population = entry.get("population", self.population) if generation > 0 else self.population
        return {"steps": entry.get("steps"), "eval_every": entry.get("eval_every"),
                "screen": entry.get("screen", self.screen) if generation > 0 else 0, "population": population,
                "elites": min(population, entry.get("elites", self.elites)) if generation > 0 else self.elites}

    def _round_follows(self, generation: int) -> bool:
        """Whether an LLM round will read this generation's results: a next generation with new starts or
        screened candidates (the phases of the last generation feed no round)."""
        if generation + 1 >= self.generations:
            return False
        plan = self._plan(generation + 1)
        return plan["population"] > plan["elites"] or plan["screen"] * plan["elites"] > 0

    def _hand_out(self, trial_id: str) -> dict:
        """The next queued start as a trial's config (``contract.CONFIG_KEYS`` and what the design adds), its
        trajectory added to the pool."""
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
        self._pool.add(Trajectory(trial_id=trial_id, generation=generation, origin=spec["origin"],
                                  prompt_init=spec["prompt_init"], resume_from=spec["resume_from"],
                                  lineage=spec.get("lineage") or trial_id,
                                  candidates=list(spec.get("prompt_candidates") or []),
                                  hyperparameters=hyperparameters))
        out = {k: config[k] for k in contract.CONFIG_KEYS}
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
        rnd, outcome = self._outcome(rnd)
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
        error = _close_round(rnd, outcome, candidates, fill, screened, screen_fill)
        log = logger.warning if error or rnd.faults or not (candidates or screened) else logger.info
        log("generation %d: LLM round %s after %d ask(s) in %.1fs: %d candidates, %d from the pool; faults %s, "
            "rejected %s", generation, "failed (" + error + ")" if error else "done", rnd.asks, outcome.elapsed,
            len(candidates) + len(screened), len(fill) + len(screen_fill), rnd.faults, rnd.rejected)

    def _outcome(self, rnd: Round) -> tuple[Round, Any]:
        """The round (asked again where restored without a thread: e.g. unpickled; the journal may replay it) and
        its outcome, ``None`` while it is asked."""
        if not self._engine.running:
            self._restart_round(rnd.generation)
            rnd = self._rounds[rnd.generation]
        return rnd, self._engine.poll(rnd, lambda replies, n: self.mentor.parse(
            replies, n, seen=lambda t: not self._pool.is_new(t)))

    def text_scores(self) -> list[Evaluation]:
        """Every text evaluated as text so far, best first, each once (``pool.text_scores``): what the mentor is
        shown with ``mentor_scores="text"``."""
        return pools.text_scores(self._pool, self._screened, self.candidate_start)

    def descents(self) -> list[Descent]:
        """What descent did to each start from text, best first (``pool.descents``; ``mentor_scores="descent"``)."""
        return pools.descents(self._pool)

    def _restart_round(self, generation: int) -> None:
        rnd = self._rounds[generation]
        self._start_round(generation, rnd.new_starts, rnd.screen_slots, rnd.lineages)

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
        """``n`` new texts made by random word edits of the best start texts (``pool.perturbed``)."""
        rng = random.Random(f"{self.seed}:{generation}:perturb")
        vocabulary = vocabulary_of(self.seed_prompts + [self.task_description]) if n > 0 else []
        return pools.perturbed(self._pool, n, rng, self.seed_prompts, vocabulary, self.max_prompt_words, exclude)

    def _fill(self, n: int, exclude: set[str]) -> list[str]:
        """Top-up when the LLM gives too few (``pool.fill``)."""
        return pools.fill(self._pool, n, exclude, self.seed_prompts)

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
        rnd, outcome = self._outcome(rnd)
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
        error = _close_round(rnd, outcome, [], [], screened, fill)
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

    def _write_record(self, generation: int, members: list[Trajectory], stopped: str | None = None) -> None:
        rnd = self._rounds.get(generation)
        record = {"search_id": self._search_id, **generation_record(
            self._pool, members, generation, rnd, self._screened, self._suspicious)}
        if self.llm_budget is not None:
            record["llm_budget"] = {"limits": self.llm_budget.limits(),
                                    "spent": self.llm_budget.spent(getattr(self.llm, "usage", None)),
                                    "reached": rnd is not None and rnd.status == "budget"}
        if stopped:
            record["stopped"] = stopped
        record["config"] = self.config.to_dict()
        self._records.append(record)
        self._logger().write_all(record, self._metric, self.evaluation_rows(), self.records)

    def _logger(self) -> GenerationLog:
        if self._log is None:
            self._log = GenerationLog(self.log_dir)
        return self._log

    def _finish(self) -> None:
        if self.overlap:  # rounds that ended after their generation's record was written: written again
            self._logger().rewrite_rounds(self._records, self._rounds, self._metric)
            if self._mailbox is not None:
                self._mailbox.shutdown()
                self._mailbox = None
        self._logger().finish(self.best())
        self._engine.close()

    # -- results -------------------------------------------------------------------------------------------

    def evaluation_rows(self) -> list[dict]:
        """Every evaluation the trials reported, one dict each (also ``<log_dir>/evaluations.csv``): trial,
        generation, origin, status, start text, lineage, adopted candidate, step, projected text, the metric
        (under its own name), loss and the trial's sampled hyperparameters."""
        return records.evaluation_rows(self.trajectories, self._metric, self._search_id)

    def dataframe(self, kind: str = "evaluations"):
        """``evaluation_rows()`` (``kind="evaluations"``) or ``records`` (``"generations"``) as a pandas DataFrame."""
        if kind not in ("evaluations", "generations"):
            raise ValueError(f"kind must be 'evaluations' or 'generations', got {kind!r}")
        return records.dataframe(self.evaluation_rows() if kind == "evaluations" else self.records)

    def round_spans(self) -> list[tuple[float, float]]:
        """``(start, end)`` wall-clock times of every LLM round asked (``timeline.round_wait``)."""
        return [(r.started, r.started + r.seconds) for r in self._rounds.values()
                if r.started and isinstance(r.seconds, (int, float))]

    @property
    def llm_seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self._rounds.values())


def _close_round(rnd: Round, outcome: Any, candidates: list[str], fill: list[str], screened: list[str],
                 screen_fill: list[str]) -> str | None:
    """Record how a round ended and what it gave; returns its error (``None``: done)."""
    error = outcome.error
    rnd.status = "done" if error is None else "budget" if error == "budget" else "failed"
    rnd.error, rnd.seconds, rnd.asks = error, round(outcome.elapsed, 3), rnd.attempt + 1
    rnd.candidates, rnd.filled, rnd.screened, rnd.screen_filled = candidates, fill, screened, screen_fill
    rnd.faults = outcome.faults
    return error


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
