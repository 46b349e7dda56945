"""Faults, for real: trials that raise or are SIGKILLed mid-phase, and an LLM endpoint that fails in every way.

Trial faults run the real MiniLM soft-prompt trainable under real Ray Tune (a test-only wrapper injects one
fault, see ``tests/scripts/rls_helpers.py``). LLM faults drive a real ``LLMSearch`` + ``OpenAIChat`` against a
local fake OpenAI-compatible server through a real ``tune.run`` of a trainable that only reports, and read
the counts back from ``generations.jsonl``, the log and TensorBoard's event files.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402

from ray_llm_search import LLMSearch, OpenAIChat  # noqa: E402
from ray_llm_search import rounds as rounds_module  # noqa: E402
from trainables.data import bbc_news_spec  # noqa: E402

pytestmark = pytest.mark.slow

TASK = "Classify a BBC news article into business, entertainment, politics, sport or technology."
SEEDS = ["the topic of this news article is", "news category:"]


@pytest.fixture(scope="module")
def ray_session():
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (helpers.HERE, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # workers import rls_helpers
    yield
    ray.shutdown()


def text_config(fault: dict) -> dict:
    return {
        "data": bbc_news_spec(shots=2, val_shots=2, test_size=10, seed=0),
        "steps": 3, "eval_every": 1, "batch_size": 4, "max_length": 32, "prompt_length": 4,
        "fault": fault,
    }


records = helpers.generation_records


def reported_steps(trial) -> list[int]:
    """Steps in the trial's result.json, one line per report that reached Tune."""
    with open(os.path.join(trial.path, "result.json")) as f:
        return [json.loads(line)["step"] for line in f.read().splitlines() if line.strip()]


# -- trial faults -----------------------------------------------------------------------------------------------


def test_a_phase_that_raises_restarts_from_its_last_checkpoint(ray_session, tmp_path):
    marker = tmp_path / "fault-raised"
    log_dir = tmp_path / "log"
    search = LLMSearch(helpers.CallLogLLM(str(tmp_path / "calls.jsonl")), TASK, SEEDS, metric="val_acc", mode="max",
                       population=2, generations=2, elites=1, log_dir=str(log_dir))
    # The first seed phase to reach step 2 raises before reporting it; its last checkpoint is step 1.
    config = text_config({"kind": "raise", "step": 2, "marker": str(marker), "generation": 0})
    analysis = tune.run(helpers.faulty_text_prompt, config=config, search_alg=search,
                        num_samples=search.total_trials, max_failures=1, storage_path=str(tmp_path), name="raise",
                        resources_per_trial={"cpu": 1}, reuse_actors=True, verbose=0)
    faulty_id = marker.read_text()
    trials = {t.trial_id: t for t in analysis.trials}
    assert faulty_id in trials, "the fault was never injected"
    assert [t.status for t in analysis.trials] == ["TERMINATED"] * 4
    assert trials[faulty_id].num_failures == 1
    # Steps 0 and 1, then (the phase raised at 2 and Tune restarted it from the step-1 checkpoint) 2 and 3:
    # a restart from scratch would report 0 and 1 again. Tune's result.json may be rewritten by the restarted
    # trial (it then holds only the steps after the restart), so it must end in 2, 3 and never go back to 0.
    logged = reported_steps(trials[faulty_id])
    assert logged in ([0, 1, 2, 3], [2, 3]), logged
    trajectory = {t.trial_id: t for t in search.trajectories}[faulty_id]
    assert [e.step for e in trajectory.evaluations] == [0, 1, 2, 3]
    assert trajectory.status == "finished"
    recs = records(log_dir)
    assert [r["generation"] for r in recs] == [0, 1]
    assert [r["errored"] for r in recs] == [0, 0]


def test_a_scheduled_phase_with_a_trained_head_restarts_with_its_steps_and_its_head(ray_session, tmp_path):
    """A chain of generation 1 (its own schedule entry: 4 steps, evaluated every 2; a linear head carried from
    generation 0) raises before reporting step 2; restarted from its step-0 checkpoint it must end exactly as the
    same search without the fault: the head, optimizer and batch order come back with the prompt."""

    def run(name: str, fault: dict | None) -> tuple[LLMSearch, list]:
        search = LLMSearch(helpers.CallLogLLM(str(tmp_path / f"{name}.jsonl")), TASK, SEEDS, metric="val_acc",
                           mode="max", population=2, elites=2, seed=3, log_dir=str(tmp_path / name),
                           schedule=[{"steps": 2, "eval_every": 1}, {"steps": 4, "eval_every": 2}])
        config = {**text_config(fault), "head": "linear"}
        analysis = tune.run(helpers.faulty_text_prompt, config=config, search_alg=search,
                            num_samples=search.total_trials, max_failures=1, storage_path=str(tmp_path), name=name,
                            resources_per_trial={"cpu": 1}, reuse_actors=True, verbose=0)
        return search, analysis.trials

    marker = tmp_path / "fault-raised"
    faulty, trials = run("faulty", {"kind": "raise", "step": 2, "marker": str(marker), "generation": 1})
    clean, _ = run("clean", None)
    faulty_id = marker.read_text()
    assert {t.trial_id: t for t in trials}[faulty_id].num_failures == 1
    by_id = {t.trial_id: t for t in faulty.trajectories}
    assert by_id[faulty_id].generation == 1 and [e.step for e in by_id[faulty_id].evaluations] == [0, 2, 4]

    def points(search):
        return sorted((t.generation, t.prompt_init, e.step, round(e.metric, 6), round(e.loss, 5))
                      for t in search.trajectories for e in t.evaluations)

    assert points(faulty) == points(clean)
    assert all(e.step in (0, 2, 4) for t in faulty.trajectories if t.generation == 1 for e in t.evaluations)


def test_a_phase_killed_with_sigkill_leaves_the_search_consistent(ray_session, tmp_path):
    marker = tmp_path / "fault-killed"
    log_dir = tmp_path / "log"
    calls = tmp_path / "calls.jsonl"
    search = LLMSearch(helpers.CallLogLLM(str(calls)), TASK, SEEDS, metric="val_acc", mode="max",
                       population=2, generations=2, elites=1, log_dir=str(log_dir))
    # The first seed phase to reach step 2 SIGKILLs its own worker process; no retries (max_failures=0).
    config = text_config({"kind": "sigkill", "step": 2, "marker": str(marker), "generation": 0})
    analysis = tune.run(helpers.faulty_text_prompt, config=config, search_alg=search,
                        num_samples=search.total_trials, max_failures=0, raise_on_failed_trial=False,
                        storage_path=str(tmp_path), name="sigkill", resources_per_trial={"cpu": 1}, reuse_actors=True,
                        verbose=0)
    killed_id = marker.read_text()
    statuses = {t.trial_id: t.status for t in analysis.trials}
    assert len(statuses) == search.total_trials == 4, "the search did not finish its trials"
    assert statuses.pop(killed_id) == "ERROR"
    assert set(statuses.values()) == {"TERMINATED"}
    # What the killed phase reported before it died stays in the search.
    trajectory = {t.trial_id: t for t in search.trajectories}[killed_id]
    assert trajectory.status == "error"
    assert [e.step for e in trajectory.evaluations] == [0, 1]
    recs = records(log_dir)
    assert [r["generation"] for r in recs] == [0, 1]  # generation 0 completed, and so did the run
    assert recs[0]["errored"] == 1 and recs[0]["trials"] == 2
    assert recs[1]["errored"] == 0 and recs[1]["trials"] == 2
    assert len(helpers.llm_calls(str(calls))) == 1
    assert os.path.isfile(log_dir / "best.json")
    # The errored phase's projections rank with the others: the best is whichever scored highest.
    values = [e.metric for t in search.trajectories for e in t.evaluations]
    assert search.best()["value"] == max(values)


# -- LLM faults -------------------------------------------------------------------------------------------------

KEY_ENV = "RLS_FAULTS_TEST_KEY"
RETRIES = 3  # four tries per round
OVERLONG = " ".join(["word"] * 40)
# Every line of this reply is unusable: chatter, overlong, a seed (tried before, twice), instructions, markup.
UNUSABLE = "\n".join([
    "Sure! Here are 3 new prompts:",
    f"1. {OVERLONG}",
    "2. The topic of this news article is",
    "3. Note: keep each prompt under ten words.",
    "4. Here is what I would try next:",
    "```",
    "5. the topic of this news article is!",
])


def llm_fault_script() -> list[helpers.Reply]:
    reply, error = helpers.Reply, helpers.error
    return [
        # generation 1: four transport faults in a row -> the round fails -> fill-in from the pool
        reply(body=helpers.completion("1. too late"), hang_s=3.0),  # timeout (the client waits 1 s)
        reply(429, error("slow down", "rate_limit_exceeded"), {**helpers.JSON, "Retry-After": "1"}),
        reply(503, error("overloaded", "server_error")),
        reply(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}),  # non-JSON
        # generation 2: an empty reply, asked again, then a reply with nothing usable -> fill-in from the pool.
        # The server then stops listening ...
        reply(body=helpers.completion("")),
        reply(body=helpers.completion(UNUSABLE), close_after=True),
        # ... so generation 3's tries are refused (connection) -> fill-in from the pool.
    ]


@pytest.fixture(scope="module")
def llm_fault_run(ray_session, tmp_path_factory):
    """One real tune.run through every LLM fault; returns what the tests read back."""
    tmp_path = tmp_path_factory.mktemp("llm_faults")
    mp = pytest.MonkeyPatch()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        mp.delenv(name, raising=False)
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    mp.setenv(KEY_ENV, "sk-faults-test")
    mp.setattr(rounds_module, "REASK_BACKOFF_S", 0.2)
    server = helpers.FakeOpenAI(llm_fault_script())
    handler = helpers.LogCapture()
    logging.getLogger("ray_llm_search").addHandler(handler)
    try:
        llm = OpenAIChat("test-model", base_url=server.base_url, api_key_env=KEY_ENV, timeout_s=1.0, retries=RETRIES,
                         backoff_s=0.05, max_backoff_s=2.0)
        log_dir = tmp_path / "log"
        search = LLMSearch(llm, TASK, SEEDS, metric="val_acc", mode="max", population=2, generations=4, elites=1,
                           log_dir=str(log_dir), llm_reasks=1, llm_timeout_s=60)
        analysis = tune.run(helpers.trivial_phase, config={"steps": 2}, search_alg=search,
                            num_samples=search.total_trials, storage_path=str(tmp_path), name="llm_faults",
                            resources_per_trial={"cpu": 1}, reuse_actors=True, verbose=0)
        yield {"analysis": analysis, "search": search, "server": server, "log_dir": log_dir,
               "logs": handler.messages, "experiment": tmp_path / "llm_faults", "left_in_script": len(server.script)}
    finally:
        logging.getLogger("ray_llm_search").removeHandler(handler)
        server.close()
        mp.undo()


EXPECTED_FAULTS = {
    1: {"timeout": 1, "rate_limit": 1, "server_error": 1, "bad_response": 1},
    2: {"empty_reply": 1},
    3: {"connection": RETRIES + 1},
}


def test_every_llm_fault_ends_in_a_pool_fill_and_the_run_completes(llm_fault_run):
    analysis, search, server = llm_fault_run["analysis"], llm_fault_run["search"], llm_fault_run["server"]
    assert llm_fault_run["left_in_script"] == 0, "not every scripted reply was asked for"
    assert len(analysis.trials) == search.total_trials == 8
    assert {t.status for t in analysis.trials} == {"TERMINATED"}
    recs = records(llm_fault_run["log_dir"])
    assert [r["generation"] for r in recs] == [0, 1, 2, 3]
    for r in recs[1:]:
        assert r["origins"] == {"elite": 1, "pool": 1}, r  # nothing from the LLM: every round filled in
        assert r["llm"]["candidates"] == [] and len(r["llm"]["filled"]) == 1
    one, two, three = (r["llm"] for r in recs[1:])
    assert (one["status"], one["error"], one["asks"]) == ("failed", "bad_response", 1)  # the last try's kind
    assert (two["status"], two["error"], two["asks"]) == ("done", None, 2)  # asked again after the empty reply
    assert (three["status"], three["error"]) == ("failed", "connection")
    for g, expected in EXPECTED_FAULTS.items():
        assert recs[g]["llm"]["faults"] == expected, (g, recs[g]["llm"])
    rejected = two["rejected"]
    assert rejected == {"empty": 1, "too_long": 1, "seen_before": 2, "chatter": 4}
    assert two["replies"] == ["", UNUSABLE]
    # Retries: four requests in round 1, two asks in round 2; Retry-After: 1 was waited for, not the 0.05 s backoff.
    assert len(server.requests) == 6
    times = [r["time"] for r in server.requests]
    assert times[2] - times[1] >= 0.95
    assert os.path.isfile(llm_fault_run["log_dir"] / "best.json")


def test_every_llm_fault_kind_is_in_the_log(llm_fault_run):
    logs = "\n".join(llm_fault_run["logs"])
    for g, expected in EXPECTED_FAULTS.items():
        line = next(m for m in llm_fault_run["logs"] if m.startswith(f"generation {g}: LLM round"))
        for kind, count in expected.items():
            assert f"'{kind}': {count}" in line, (kind, line)
    line = next(m for m in llm_fault_run["logs"] if m.startswith("generation 2: LLM round"))
    for reason in ("empty", "too_long", "seen_before", "chatter"):
        assert f"'{reason}'" in line, (reason, line)
    assert "asking again" in logs


def test_every_llm_fault_kind_and_rejection_is_in_tensorboard(llm_fault_run):
    scalars, texts = helpers.read_events(str(llm_fault_run["log_dir"] / "llm_search"))
    for g, expected in EXPECTED_FAULTS.items():
        for kind, count in expected.items():
            assert (g, count) in scalars[f"llm_search/faults/{kind}"], (kind, scalars.get(f"llm_search/faults/{kind}"))
    rejected = records(llm_fault_run["log_dir"])[2]["llm"]["rejected"]
    for reason, count in rejected.items():
        assert scalars[f"llm_search/rejected/{reason}"] == [(2, count)]
    # Per generation: best and mean metric, best so far; as text the meta-prompt, the reply, the parsed
    # candidates and the best prompt.
    for tag in ("llm_search/best_val_acc", "llm_search/mean_val_acc", "llm_search/best_so_far"):
        assert [step for step, _ in scalars[tag]] == [0, 1, 2, 3], tag
    recs = records(llm_fault_run["log_dir"])
    assert scalars["llm_search/best_val_acc"][0][1] == pytest.approx(recs[0]["best_metric"])
    by_tag = {tag.split("/text_summary")[0]: values for tag, values in texts.items()}
    assert [step for step, _ in by_tag["llm_search/best_prompt"]] == [0, 1, 2, 3]
    assert [step for step, _ in by_tag["llm_search/meta_prompt"]] == [1, 2, 3]
    assert [step for step, _ in by_tag["llm_search/reply"]] == [1, 2, 3]
    assert [step for step, _ in by_tag["llm_search/candidates"]] == [1, 2, 3]
    assert [step for step, _ in by_tag["llm_search/filled"]] == [1, 2, 3]
    meta = dict(by_tag["llm_search/meta_prompt"])
    assert TASK in meta[1] and "Trajectory" in meta[1]
    assert "Here is what I would try next" in dict(by_tag["llm_search/reply"])[2]
    assert recs[3]["best_prompt"] in dict(by_tag["llm_search/best_prompt"])[3]


def test_tune_writes_its_per_trial_scalars_next_to_the_search_ones(llm_fault_run):
    experiment = llm_fault_run["experiment"]
    trial_dirs = [t.path for t in llm_fault_run["analysis"].trials]
    assert len(trial_dirs) == 8
    for folder in trial_dirs:
        assert str(experiment) in folder
        scalars, _ = helpers.read_events(folder)
        assert [round(v, 6) for _, v in scalars["ray/tune/val_acc"]], folder
        assert len(scalars["ray/tune/step"]) == 3  # steps 0, 1, 2
