"""Resume after the driver is SIGKILLed mid-run, with ``Tuner.restore`` and with ``tune.run(resume=True)``.

A driver process (``tests/scripts/resume_driver.py``) joins this module's Ray cluster and runs a search of
3 generations x 2 phases; once generation 0 is recorded and the LLM has answered round 1, the test SIGKILLs it
(its whole process group) while generation 1's phases run. The test then resumes the experiment in its own
process. Every generation must be recorded exactly once, every trial of the search run, and the LLM (a fake
that appends a line per call to a file shared by both processes) asked exactly once per round.

Tune saves the experiment state (trials and searcher state) at most every ``TUNE_GLOBAL_CHECKPOINT_S``
(default: 10 s or more), so a killed driver has usually got further than its saved state. The two cases take
the two extremes: the ``Tuner`` case saves only at the start (3600 s), so the resumed search completes
generation 0 again and must neither record it twice nor ask the LLM again for round 1 (it replays the answer
the killed driver journaled); the ``tune.run`` case saves at every step (0 s), so the state itself holds the
finished round.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
sys.path.insert(0, SCRIPTS)
import resume_driver  # noqa: E402
import rls_helpers as helpers  # noqa: E402

from ray_llm_search import LLMSearch  # noqa: E402

pytestmark = pytest.mark.slow

DRIVER = os.path.join(SCRIPTS, "resume_driver.py")
GENERATIONS = resume_driver.search_args("")["generations"]
POPULATION = resume_driver.search_args("")["population"]
TOTAL_TRIALS = POPULATION * GENERATIONS


@pytest.fixture(scope="module")
def ray_address():
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (SCRIPTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


records = helpers.generation_records


def run_and_kill(tmp_path, api: str, address: str, env: dict | None = None) -> dict:
    """Start the driver, SIGKILL it during generation 1, and return the paths it used and its pid."""
    paths = {"storage": tmp_path / "storage", "name": f"resume_{api}", "log_dir": tmp_path / "log",
             "calls": tmp_path / "llm_calls.jsonl"}
    stderr = open(tmp_path / "driver.stderr", "w")
    proc = subprocess.Popen(
        [sys.executable, DRIVER, "--address", address, "--api", api, "--storage", str(paths["storage"]),
         "--name", paths["name"], "--log-dir", str(paths["log_dir"]), "--calls", str(paths["calls"])],
        stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True, env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 300
        while not (records(paths["log_dir"]) and helpers.llm_calls(str(paths["calls"]))):
            if proc.poll() is not None:
                stderr.flush()
                pytest.fail(f"the driver ended before it was killed:\n{(tmp_path / 'driver.stderr').read_text()[-3000:]}")
            assert time.monotonic() < deadline, "generation 0 never completed"
            time.sleep(0.05)
        time.sleep(0.5)  # generation 1's phases are running now
        assert proc.poll() is None, "the driver finished before it could be killed mid-run"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole process group: this test started it
        proc.wait(timeout=30)
        stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert [r["generation"] for r in records(paths["log_dir"])][:1] == [0]
    assert len(records(paths["log_dir"])) < GENERATIONS
    return {**paths, "pid": proc.pid, "calls_before": len(helpers.llm_calls(str(paths["calls"])))}


def check_resumed(run: dict, statuses: list[str]) -> None:
    assert statuses == ["TERMINATED"] * TOTAL_TRIALS
    recs = records(run["log_dir"])
    # Every generation recorded exactly once, by the same search.
    assert [r["generation"] for r in recs] == list(range(GENERATIONS))
    assert len({r["search_id"] for r in recs}) == 1
    assert [r["trials"] for r in recs] == [POPULATION] * GENERATIONS
    # One LLM call per round after generation 0, in both processes together; the killed driver made the first.
    calls = helpers.llm_calls(str(run["calls"]))
    assert len(calls) == GENERATIONS - 1, calls
    assert calls[0]["pid"] == run["pid"] and run["calls_before"] == 1
    assert calls[1]["pid"] == os.getpid()
    assert os.path.isfile(run["log_dir"] / "best.json")
    # TensorBoard holds one point per generation: the killed run's events past the restored state are purged.
    scalars, texts = helpers.read_events(str(run["log_dir"] / "llm_search"))
    assert [step for step, _ in scalars["llm_search/best_val_acc"]] == list(range(GENERATIONS))
    assert [step for step, _ in texts["llm_search/meta_prompt/text_summary"]] == list(range(1, GENERATIONS))


@pytest.fixture
def searcher_log():
    handler = helpers.LogCapture()
    package = logging.getLogger("ray_llm_search")
    level = package.level
    package.setLevel(logging.INFO)
    package.addHandler(handler)
    yield handler.messages
    package.removeHandler(handler)
    package.setLevel(level)


def test_tuner_restore_after_the_driver_is_killed(ray_address, tmp_path, searcher_log):
    run = run_and_kill(tmp_path, "tuner", ray_address, env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    # No searcher is passed: Tune unpickles the LLMSearch from tuner.pkl and restores its saved state into it.
    tuner = tune.Tuner.restore(str(run["storage"] / run["name"]), trainable=helpers.trivial_phase,
                               resume_errored=True)
    results = tuner.fit()
    assert not results.errors
    check_resumed(run, ["TERMINATED"] * results.num_terminated + ["ERROR"] * results.num_errors)
    assert len(results) == TOTAL_TRIALS
    # The state was saved before round 1 was asked: its answer came from the journal, not from the LLM.
    assert any("replaying the answer journaled" in m for m in searcher_log)
    assert any("replacing its line" in m for m in searcher_log)  # generation 0 was recorded again


def test_tune_run_resume_after_the_driver_is_killed(ray_address, tmp_path, searcher_log):
    # Saving every second (not continuously): Tune's copy of its own state into storage_path is not atomic, and a
    # driver killed in the middle of that copy leaves a truncated search_gen_state file that Tune cannot restore
    # (it then restarts the experiment from scratch). Seen once in CI-like runs with a period of 0.
    run = run_and_kill(tmp_path, "run", ray_address, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    search = LLMSearch(helpers.CallLogLLM(str(run["calls"])), **resume_driver.search_args(str(run["log_dir"])))
    analysis = tune.run(helpers.trivial_phase, config=resume_driver.base_config(), search_alg=search,
                        num_samples=search.total_trials, name=run["name"], storage_path=str(run["storage"]),
                        resources_per_trial={"cpu": 1}, resume=True, verbose=0)
    check_resumed(run, [t.status for t in analysis.trials])
    # The fresh LLMSearch took over the saved search: its identity, generations and trajectories.
    assert search.records[-1]["search_id"] == records(run["log_dir"])[0]["search_id"]
    assert [r["generation"] for r in search.records] == list(range(GENERATIONS))
    assert sorted(t.trial_id for t in search.trajectories) == sorted(t.trial_id for t in analysis.trials)
    replayed = [m for m in searcher_log if "replaying the answer journaled" in m]
    print(f"tune.run(resume=True): {len(replayed)} LLM answer(s) replayed from the journal")
