"""LLMSearch driven directly, the way Tune's SearchGenerator drives it, with a scripted fake LLM.

No Ray cluster: the tests call ``suggest``, ``on_trial_result`` and ``on_trial_complete`` themselves.
"""

from __future__ import annotations

import json
import pickle
import threading
import time
from collections.abc import Callable

import pytest
from ray.tune.search import Searcher

from ray_llm_search import testing
from ray_llm_search.llm import LLM, LLMError
from ray_llm_search.pool import normalize
from ray_llm_search.searcher import CONFIG_KEYS, LLMSearch

METRIC = "val_acc"
SECRET = "sk-test-SENTINEL-0123456789abcdef"
WAIT_S = 5.0  # how long a test waits for the background LLM round before failing


class ScriptedLLM(testing.ScriptedLLM):
    """Canned replies in order, then fresh prompts ("1. llm idea {call} 0", ...); its ``api_key`` holds a
    sentinel that must never reach the searcher's saved state."""

    def __init__(self, script: list | None = None, gate: threading.Event | None = None,
                 blocked_calls: set[int] | None = None) -> None:
        super().__init__(script, gate=gate, blocked_calls=blocked_calls, api_key=SECRET)


def make(tmp_path, llm: LLM, **kwargs) -> LLMSearch:
    args = dict(
        task_description="Classify BBC news by topic.",
        seed_prompts=["seed a", "seed b", "seed c"],
        metric=METRIC,
        mode="max",
        population=4,
        generations=3,
        elites=1,
        top_k=8,
        seed=0,
        log_dir=str(tmp_path / "log"),
    )
    args.update(kwargs)
    return LLMSearch(llm, **args)


class Driver:
    """Plays Tune: numbers trials, reports results, completes them."""

    def __init__(self, search: LLMSearch) -> None:
        self.search = search
        self.count = 0
        self.configs: dict[str, dict] = {}

    def next_id(self) -> str:
        return f"t{self.count:03d}"

    def suggest(self) -> dict | str | None:
        """One suggest call; a config is recorded under a new trial id."""
        tid = self.next_id()
        config = self.search.suggest(tid)
        if isinstance(config, dict):
            self.configs[tid] = config
            self.count += 1
        return config

    def take(self, n: int = 1) -> list[tuple[str, dict]]:
        """The next ``n`` configs, waiting for the background LLM round when ``suggest`` says None."""
        out = []
        for _ in range(n):
            deadline = time.monotonic() + WAIT_S
            while True:
                config = self.suggest()
                if isinstance(config, dict):
                    out.append((f"t{self.count - 1:03d}", config))
                    break
                assert config is None, f"unexpected {config!r}"
                assert time.monotonic() < deadline, "suggest kept returning None: the LLM round never finished"
                time.sleep(0.002)
        return out

    def report(self, tid: str, text: str, value: float, step: int = 1, **extra) -> dict:
        result = {METRIC: value, "loss": 1.0 - value, "prompt_text": text, "step": step,
                  "vectors_path": f"/ckpt/{tid}/best", "training_iteration": step, **extra}
        self.search.on_trial_result(tid, result)
        return result

    def run(self, tid: str, value: float, *, error: bool = False) -> None:
        """A two-evaluation phase whose best projection is ``<tid> best`` (at step 2, ``value``)."""
        self.report(tid, f"{tid} start", value - 0.1, step=1)
        last = self.report(tid, f"{tid} best", value, step=2)
        self.search.on_trial_complete(tid, None if error else last, error=error)

    def generation(self, size: int, score: Callable[[str, dict], float] | None = None) -> list[tuple[str, dict]]:
        """Hand out a whole generation, then run and complete every trial of it."""
        trials = self.take(size)
        for tid, config in trials:
            self.run(tid, score(tid, config) if score else _score(tid))
        return trials


def _score(tid: str) -> float:
    # distinct, deterministic, unordered metrics in [0.1, 0.9)
    return 0.1 + (int(tid[1:]) * 37 % 80) / 100


def _origins(trials: list[tuple[str, dict]]) -> list[str]:
    return [config["origin"] for _, config in trials]


# -- generation 0 ------------------------------------------------------------------------------------------


def test_generation0_cycles_seed_prompts_with_the_design_config_keys(tmp_path):
    llm = ScriptedLLM()
    search = make(tmp_path, llm, seed_prompts=["seed a", "seed b"], population=5)
    driver = Driver(search)
    configs = [driver.suggest() for _ in range(5)]
    assert [c["prompt_init"] for c in configs] == ["seed a", "seed b", "seed a", "seed b", "seed a"]
    for config in configs:
        assert set(config) == set(CONFIG_KEYS) == {"prompt_init", "resume_from", "generation", "origin",
                                                   "phase_seed", "vector_dir"}
        assert config["resume_from"] is None
        assert config["generation"] == 0
        assert config["origin"] == "seed"
        assert isinstance(config["phase_seed"], int)
        assert config["vector_dir"].startswith(str(tmp_path / "log"))
    assert len({c["phase_seed"] for c in configs}) == 5  # repeated texts still differ by their seed
    # The generation is handed out and not complete: wait, do not finish.
    assert driver.suggest() is None
    assert driver.suggest() is None
    assert llm.calls == 0
    assert search.total_trials == 5 + 5 * 2


def test_generation0_takes_every_seed_when_there_are_more_seeds_than_population(tmp_path):
    search = make(tmp_path, ScriptedLLM(), seed_prompts=["s1", "s2", "s3"], population=2, generations=2)
    driver = Driver(search)
    assert [c["prompt_init"] for _, c in driver.take(3)] == ["s1", "s2", "s3"]
    assert driver.suggest() is None
    assert search.total_trials == 3 + 2


# -- completing a generation ---------------------------------------------------------------------------------


def test_generation_completes_only_when_every_trial_finished_errored_or_stopped(tmp_path):
    llm = ScriptedLLM()
    search = make(tmp_path, llm, population=4, generations=2)
    driver = Driver(search)
    (a, _), (b, _), (c, _), (d, _) = driver.take(4)

    driver.run(a, 0.5)
    search.on_trial_complete(a, error=True)  # Tune calls again with error=True if on_trial_complete raised
    # b: the best so far, then its worker dies; what it reported stays.
    driver.report(b, f"{b} best", 0.95, step=1)
    search.on_trial_complete(b, error=True)
    # c: stopped early by a scheduler after one evaluation.
    partial = driver.report(c, f"{c} early", 0.3, step=1)
    search.on_trial_complete(c, partial)
    assert search.records == []
    assert driver.suggest() is None  # d is still running
    assert llm.calls == 0

    search.on_trial_complete(d, error=True)  # errored before reporting anything
    assert [r["generation"] for r in search.records] == [0]
    record = search.records[0]
    assert record["trials"] == 4 and record["errored"] == 2
    by_id = {t.trial_id: t for t in search.trajectories}
    assert by_id[a].status == "finished"  # the second call changed nothing
    assert by_id[b].status == "error" and [e.metric for e in by_id[b].evaluations] == [0.95]
    assert [e.text for e in by_id[c].evaluations] == [f"{c} early"]  # the same last result twice counts once
    assert by_id[d].evaluations == []

    # The errored trial's trajectory still counts: it is the elite of generation 1.
    (_, elite), = driver.take(1)
    assert elite["origin"] == "elite" and elite["generation"] == 1
    assert elite["resume_from"] == f"/ckpt/{b}/best" and elite["prompt_init"] == f"{b} best"
    # More completions of old trials change nothing.
    search.on_trial_complete(a, error=True)
    search.on_trial_complete(d)
    assert len(search.records) == 1


# -- elites while the LLM thinks, then the LLM's candidates ---------------------------------------------------


def test_elites_are_handed_out_while_the_llm_thinks_and_suggest_never_blocks(tmp_path):
    gate = threading.Event()
    reply = "1. gamma prompt words\n2. alpha prompt words\n3. beta prompt words"
    llm = ScriptedLLM([[reply]], gate=gate)
    search = make(tmp_path, llm, population=4, elites=1, generations=2)
    driver = Driver(search)
    try:
        trials = driver.take(4)
        for tid, _ in trials[:3]:
            driver.run(tid, 0.4)
        best = trials[3][0]
        # Best evaluation in the middle of the trajectory: the elite restarts from it, not from the last.
        driver.report(best, f"{best} first", 0.5, step=1)
        driver.report(best, f"{best} peak", 0.9, step=2, vectors_path=f"/ckpt/{best}/best-vectors")
        last = driver.report(best, f"{best} last", 0.7, step=3, vectors_path=f"/ckpt/{best}/best-vectors")
        search.on_trial_complete(best, last)

        start = time.perf_counter()
        (_, elite), = driver.take(1)
        nothing = [driver.suggest() for _ in range(20)]
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, f"suggest waited on the LLM ({elapsed:.2f}s)"
        assert nothing == [None] * 20
        assert elite == {**elite, "origin": "elite", "generation": 1, "prompt_init": f"{best} peak",
                         "resume_from": f"/ckpt/{best}/best-vectors"}
        assert not gate.is_set()
    finally:
        gate.set()

    llm_trials = driver.take(3)
    assert [c["prompt_init"] for _, c in llm_trials] == ["gamma prompt words", "alpha prompt words",
                                                           "beta prompt words"]
    assert all(c["origin"] == "llm" and c["generation"] == 1 and c["resume_from"] is None for _, c in llm_trials)
    assert driver.suggest() is Searcher.FINISHED  # last generation handed out
    assert llm.calls == 1
    # The LLM saw the trajectories, best projection included.
    assert f"{best} peak" in llm.prompts[0] and "Classify BBC news by topic." in llm.prompts[0]


def test_elites_come_from_distinct_lineages(tmp_path):
    search = make(tmp_path, ScriptedLLM(), population=5, elites=2, generations=3)
    driver = Driver(search)
    scores = {"t000": 0.9, "t001": 0.8, "t002": 0.3, "t003": 0.2, "t004": 0.1}
    driver.generation(5, lambda tid, c: scores[tid])
    gen1 = driver.take(5)
    assert _origins(gen1)[:2] == ["elite", "elite"]
    assert [c["resume_from"] for _, c in gen1[:2]] == ["/ckpt/t000/best", "/ckpt/t001/best"]
    # Generation 1: the elite continuing t000 comes second overall (below t000, above t001) ...
    values = {gen1[0][0]: 0.85, gen1[1][0]: 0.5}
    for tid, _ in gen1:
        driver.run(tid, values.get(tid, 0.15))
    # ... yet the next elites are t000 and t001, not t000's descendant as well.
    gen2 = driver.take(5)
    assert _origins(gen2)[:2] == ["elite", "elite"]
    assert [c["resume_from"] for _, c in gen2[:2]] == ["/ckpt/t000/best", "/ckpt/t001/best"]


# -- de-duplication and top-up -------------------------------------------------------------------------------


def test_llm_candidates_already_tried_or_projected_are_dropped_and_the_pool_tops_up(tmp_path):
    reply = "\n".join([
        "1. SEED A.",  # a seed, already started (case and punctuation differ)
        "2. 'T002 Best'",  # a projection some phase reported
        "3. fresh idea",
        "4. Fresh idea!",  # a duplicate within the reply
    ])
    llm = ScriptedLLM([[reply]])
    search = make(tmp_path, llm, population=5, elites=1, generations=2)
    driver = Driver(search)
    driver.generation(5)
    gen1 = driver.take(5)
    assert _origins(gen1) == ["elite", "llm", "pool", "pool", "pool"]
    assert gen1[1][1]["prompt_init"] == "fresh idea"
    starts = [normalize(c["prompt_init"]) for _, c in gen1]
    assert len(set(starts)) == 5, f"a start was repeated within the generation: {starts}"
    tried = {normalize(c["prompt_init"]) for c in list(driver.configs.values())[:5]}
    assert not tried & set(starts[1:]), "a new start repeats one from generation 0"
    # Pool fill-ins are projections that no phase started from.
    projections = {normalize(f"t{i:03d} best") for i in range(5)} | {normalize(f"t{i:03d} start") for i in range(5)}
    assert set(starts[2:]) <= projections
    for tid, _ in gen1:
        driver.run(tid, 0.2)
    rejected = search.records[1]["llm"]["rejected"]
    assert rejected["seen_before"] == 2 and rejected["duplicate"] == 1
    assert search.records[1]["llm"]["candidates"] == ["fresh idea"]
    assert search.records[1]["origins"] == {"elite": 1, "llm": 1, "pool": 3}


@pytest.mark.parametrize(
    "reply, status, error",
    [
        pytest.param([], "done", None, id="empty"),
        pytest.param(["", "   ", "Sure! Here are the prompts:", "!!! ???", "x " * 400, "bad\x00bytes here"],
                     "done", None, id="garbage"),
        pytest.param("one prompt, not a list", "done", None, id="str-instead-of-list"),
        pytest.param(None, "failed", "TypeError", id="none"),
        pytest.param(LLMError("rate_limit", "429 after 5 retries"), "failed", "rate_limit", id="llm-error"),
        pytest.param(RuntimeError("bug in a user's LLM"), "failed", "RuntimeError", id="crash"),
    ],
)
def test_a_bad_llm_round_is_filled_from_the_pool_and_the_search_goes_on(tmp_path, reply, status, error):
    llm = ScriptedLLM([reply])
    search = make(tmp_path, llm, population=4, elites=1, generations=3)
    driver = Driver(search)
    driver.generation(4)
    gen1 = driver.generation(4)
    origins = _origins(gen1)
    assert origins[0] == "elite"
    if reply == "one prompt, not a list":  # a bare string is one reply, not a list of one-letter replies
        assert origins == ["elite", "llm", "pool", "pool"]
        assert gen1[1][1]["prompt_init"] == "one prompt, not a list"
    else:
        assert origins == ["elite", "pool", "pool", "pool"]
    starts = [normalize(c["prompt_init"]) for _, c in gen1]
    assert len(set(starts)) == 4 and all(starts)
    assert all(len(s.split()) <= search.max_prompt_words for s in starts)
    info = search.records[1]["llm"]
    assert (info["status"], info["error"]) == (status, error)
    # The next round works again.
    gen2 = driver.generation(4)
    assert _origins(gen2) == ["elite", "llm", "llm", "llm"]
    assert driver.suggest() is Searcher.FINISHED
    assert llm.calls == 2


def test_an_llm_round_that_times_out_is_filled_and_does_not_hold_up_the_next_round(tmp_path):
    gate = threading.Event()
    llm = ScriptedLLM(gate=gate, blocked_calls={1})  # the first call hangs
    search = make(tmp_path, llm, population=3, elites=1, generations=3, llm_timeout_s=0.2)
    driver = Driver(search)
    try:
        driver.generation(3)
        gen1 = driver.generation(3)
        assert _origins(gen1) == ["elite", "pool", "pool"]
        assert search.records[1]["llm"]["error"] == "timeout"
        assert search.records[1]["llm"]["faults"] == {"round_timeout": 1}
        gen2 = driver.take(3)  # the hung call 1 must not queue call 2 behind it
        assert _origins(gen2) == ["elite", "llm", "llm"]
        assert not gate.is_set()
    finally:
        gate.set()


def test_with_no_trial_running_suggest_waits_for_the_round_and_hands_out_its_phase_when_it_ends(tmp_path):
    """Tune, with no trial running, calls suggest, sleeps 1 s on None and 1 s more after a trial comes: a
    searcher whose next phases wait for a round blocks for it instead (up to rounds.IDLE_WAIT_S)."""
    from ray_llm_search.rounds import IDLE_WAIT_S

    gate = threading.Event()
    search = make(tmp_path, ScriptedLLM(gate=gate), seed_prompts=["seed a", "seed b"], population=2, elites=1,
                  screen=1, generations=2)
    driver = Driver(search)
    driver.generation(2)  # generation 1's elite screens a candidate: held until the round ends
    opener = threading.Timer(0.4, gate.set)
    opener.start()
    try:
        t = time.monotonic()
        config = driver.suggest()  # one call: nothing of this search runs, so it waits for the round
        waited = time.monotonic() - t
    finally:
        gate.set()
        opener.cancel()
    assert isinstance(config, dict) and config["generation"] == 1
    assert 0.3 < waited < IDLE_WAIT_S
    for tid, _ in [(f"t{driver.count - 1:03d}", config), *driver.take(1)]:
        driver.run(tid, 0.5)
    assert search.records[1]["llm"]["seconds"] < 0.4 + 0.5  # the round's time, not a later poll's


def test_the_idle_wait_grows_with_the_rounds_so_that_a_longer_round_hands_out_its_phase_in_one_ask(
        tmp_path, monkeypatch):
    """A round longer than the wait makes suggest return None, and Tune then sleeps 1 s after the trial it finds
    on its next ask: the wait is twice the longest round so far (rounds.idle_wait_s), here scaled down."""
    from ray_llm_search import rounds

    monkeypatch.setattr(rounds, "IDLE_WAIT_S", 0.4)
    monkeypatch.setattr(rounds, "IDLE_WAIT_MAX_S", 5.0)
    assert rounds.idle_wait_s([]) == 0.4 and rounds.idle_wait_s([0.3, None, float("nan")]) == 0.6
    assert rounds.idle_wait_s([9.0]) == 5.0
    delays = [0.8, 1.0]

    class Slow(ScriptedLLM):
        def propose(self, meta_prompt, n):
            time.sleep(delays.pop(0))
            return super().propose(meta_prompt, n)

    search = make(tmp_path, Slow(), seed_prompts=["seed a", "seed b"], population=2, elites=1, screen=1,
                  generations=3)
    driver = Driver(search)
    driver.generation(2)
    assert driver.suggest() is None  # the first round (0.8 s) outlasts the first wait (0.4 s)
    for _ in range(20):  # asks until the first round is done (no earlier round to size the wait by)
        config = driver.suggest()
        if config is not None:
            break
    assert isinstance(config, dict) and config["generation"] == 1
    for tid, _ in [(f"t{driver.count - 1:03d}", config), *driver.take(1)]:
        driver.run(tid, 0.5)
    t = time.monotonic()
    config = driver.suggest()  # the second round (1.0 s) is within twice the first's time (1.6 s): one ask
    assert isinstance(config, dict) and config["generation"] == 2
    assert 0.7 < time.monotonic() - t < 5.0


def test_while_a_trial_runs_suggest_never_waits_for_a_round(tmp_path):
    gate = threading.Event()
    search = make(tmp_path, ScriptedLLM(gate=gate), population=3, elites=1, generations=2)
    driver = Driver(search)
    try:
        driver.generation(3)
        elite = driver.take(1)  # the elite starts at once; the round for the two new starts is gated
        assert _origins(elite) == ["elite"]
        t = time.monotonic()
        assert driver.suggest() is None
        assert time.monotonic() - t < 0.2  # the elite is running: Tune has its results to handle
        driver.run(elite[0][0], 0.5)  # now nothing runs: the next ask may wait, and gets the round's phases
        gate.set()
        assert _origins(driver.take(2)) == ["llm", "llm"]
    finally:
        gate.set()


# -- the end of the search -----------------------------------------------------------------------------------


def test_finished_after_the_last_generation_with_logs_and_best(tmp_path):
    llm = ScriptedLLM()
    search = make(tmp_path, llm, population=3, generations=3)
    driver = Driver(search)
    driver.generation(3)
    driver.generation(3)
    last = driver.take(3)
    assert driver.suggest() is Searcher.FINISHED  # handed out, still running
    assert not (tmp_path / "log" / "best.json").exists()
    winner = last[1][0]
    for tid, _ in last:
        driver.run(tid, 0.99 if tid == winner else 0.05)
    assert driver.suggest() is Searcher.FINISHED
    assert driver.count == search.total_trials == 9

    best = search.best()
    assert best["prompt_text"] == f"{winner} best"
    assert best["value"] == pytest.approx(0.99)
    assert best["vectors_path"] == f"/ckpt/{winner}/best"
    assert best["metric"] == METRIC and best["trial_id"] == winner and best["generation"] == 2

    lines = (tmp_path / "log" / "generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["generation"] for r in records] == [0, 1, 2]
    assert [r["trials"] for r in records] == [3, 3, 3]
    assert records[0]["origins"] == {"seed": 3}
    assert records[2]["best_so_far"] == pytest.approx(0.99)
    on_disk = json.loads((tmp_path / "log" / "best.json").read_text())
    assert on_disk == json.loads(json.dumps(best))
    assert llm.calls == 2  # one round per generation after the first
    assert SECRET not in (tmp_path / "log" / "generations.jsonl").read_text()


def test_mode_min_ranks_lowest_first(tmp_path):
    llm = ScriptedLLM()
    search = make(tmp_path, llm, metric=None, mode=None, population=3, generations=2)
    with pytest.raises(ValueError, match="metric and mode"):
        search.suggest("t000")
    assert search.set_search_properties("val_loss", "min", {})
    driver = Driver(search)
    trials = driver.take(3)
    values = {trials[0][0]: 0.5, trials[1][0]: 0.2, trials[2][0]: 0.8}
    for tid, _ in trials:
        for step, (suffix, value) in enumerate([("hi", values[tid] + 0.3), ("lo", values[tid]),
                                                ("mid", values[tid] + 0.1)], 1):
            search.on_trial_result(tid, {"val_loss": value, "loss": value, "prompt_text": f"{tid} {suffix}",
                                         "step": step, "vectors_path": f"/ckpt/{tid}/best"})
        search.on_trial_complete(tid)
    winner = trials[1][0]
    (_, elite), = driver.take(1)
    assert "lower is better" in llm.prompts[0]
    assert elite["origin"] == "elite"
    assert elite["resume_from"] == f"/ckpt/{winner}/best" and elite["prompt_init"] == f"{winner} lo"
    best = search.best()
    assert best["value"] == pytest.approx(0.2) and best["prompt_text"] == f"{winner} lo"
    assert search.records[0]["best_metric"] == pytest.approx(0.2)


# -- save / restore / pickle -----------------------------------------------------------------------------------


def _continue_to_the_end(search: LLMSearch, driver: Driver, running: list[str]) -> None:
    driver.search = search
    for tid in running:
        driver.run(tid, _score(tid))
    while True:
        deadline = time.monotonic() + WAIT_S
        config = driver.suggest()
        while config is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
            config = driver.suggest()
        if config is Searcher.FINISHED:
            break
        driver.run(f"t{driver.count - 1:03d}", _score(f"t{driver.count - 1:03d}"))


def test_restore_in_the_middle_of_a_generation_does_not_ask_finished_rounds_again(tmp_path):
    llm = ScriptedLLM()
    search = make(tmp_path, llm, population=4, generations=3)
    driver = Driver(search)
    driver.generation(4)
    gen1 = driver.take(3)  # the fourth stays queued
    assert _origins(gen1) == ["elite", "llm", "llm"]
    for tid, _ in gen1[:2]:
        driver.run(tid, _score(tid))
    path = str(tmp_path / "searcher.pkl")
    search.save(path)
    assert llm.calls == 1
    saved = (tmp_path / "searcher.pkl").read_bytes()
    assert SECRET.encode() not in saved and b"api_key" not in saved

    llm2 = ScriptedLLM()
    restored = make(tmp_path, llm2, population=4, generations=3)
    restored.restore(path)
    time.sleep(0.05)
    assert llm2.calls == 0  # round 1 had finished
    driver.search = restored
    (fourth, config), = driver.take(1)
    assert config["origin"] == "llm" and config["prompt_init"] == "llm idea 1 2"  # from the saved queue
    assert driver.suggest() is None
    _continue_to_the_end(restored, driver, [tid for tid, _ in gen1[2:]] + [fourth])
    assert llm2.calls == 1  # round 2 only
    assert [r["generation"] for r in restored.records] == [0, 1, 2]
    lines = (tmp_path / "log" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == [0, 1, 2]
    assert driver.count == restored.total_trials == 12
    assert [t.generation for t in restored.trajectories] == [0] * 4 + [1] * 4 + [2] * 4
    assert restored.best() is not None and (tmp_path / "log" / "best.json").exists()


def test_restore_and_pickle_while_a_round_is_pending(tmp_path):
    gate = threading.Event()
    llm = ScriptedLLM(gate=gate)
    search = make(tmp_path, llm, population=4, generations=3)
    driver = Driver(search)
    try:
        driver.generation(4)
        (elite_id, elite), = driver.take(1)
        assert elite["origin"] == "elite" and driver.suggest() is None  # round 1 is pending

        clone = pickle.loads(pickle.dumps(search))  # Tune pickles the search algorithm
        assert clone.llm.gate is None and clone.llm.api_key == SECRET  # the fake's own pickling
        clone_configs = Driver(clone)
        clone_configs.count = driver.count
        assert _origins(clone_configs.take(3)) == ["llm", "llm", "llm"]  # the clone asks again

        path = str(tmp_path / "searcher.pkl")
        search.save(path)
        assert SECRET.encode() not in (tmp_path / "searcher.pkl").read_bytes()
        calls_at_save = llm.calls
        llm2 = ScriptedLLM()
        restored = make(tmp_path, llm2, population=4, generations=3)
        restored.restore(path)
        driver.search = restored
        gen1 = driver.take(3)
        assert _origins(gen1) == ["llm", "llm", "llm"]  # the elite is not handed out again
        assert llm2.calls == 1  # the pending round, asked again
        _continue_to_the_end(restored, driver, [elite_id] + [tid for tid, _ in gen1])
        assert llm2.calls == 2
        assert llm.calls == calls_at_save  # the old searcher's blocked round was never used
        assert [r["generation"] for r in restored.records] == [0, 1, 2]
        assert [r["trials"] for r in restored.records] == [4, 4, 4]
        assert driver.count == restored.total_trials
    finally:
        gate.set()


# -- argument and result validation ---------------------------------------------------------------------------


def test_a_result_with_prompt_text_but_without_the_metric_raises(tmp_path):
    search = make(tmp_path, ScriptedLLM())
    driver = Driver(search)
    (tid, _), = driver.take(1)
    with pytest.raises(ValueError, match=METRIC):
        search.on_trial_result(tid, {"prompt_text": "some words", "loss": 0.3, "step": 1})
    search.on_trial_result(tid, {"training_iteration": 1, "time_total_s": 0.1})  # Tune's own keys: ignored
    search.on_trial_result("not-ours", {METRIC: 0.5, "prompt_text": "x"})  # not ours: ignored
    assert search.trajectories[0].evaluations == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"population": 0}, "population"),
        ({"population": 4, "elites": -1}, "elites"),
        ({"population": 4, "elites": 5}, "elites"),
        ({"mode": "maximize"}, "mode"),
        ({"seed_prompts": []}, "seed_prompts"),
        ({"seed_prompts": ["", "   "]}, "seed_prompts"),
        ({"seed_prompts": "the topic of this article is"}, "seed_prompts"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_constructor_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path, ScriptedLLM(), **kwargs)


# -- cost ------------------------------------------------------------------------------------------------------


def test_searcher_cpu_time_per_event_is_small(tmp_path):
    search = make(tmp_path, ScriptedLLM(), population=16, elites=2, generations=3)
    driver = Driver(search)
    for _ in range(3):
        for tid, _ in driver.take(16):
            value = _score(tid)
            for step in range(1, 6):
                driver.report(tid, f"{tid} step {step}", value - 0.01 * (5 - step), step=step)
            search.on_trial_complete(tid)
    assert driver.suggest() is Searcher.FINISHED
    assert len(search.records) == 3
    # suggest + 5 results + complete per trial, plus the None polls while the LLM answered
    assert search.cpu_seconds_per_event < 1e-3, f"{search.cpu_seconds_per_event * 1e3:.3f} ms per event"
