"""ray_llm_search.timeline: where the workers' time goes, from the phases' own timing keys; and those keys
as the real text trainable reports them under real Tune with reused actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ray_llm_search.timeline import describe, round_wait, worker_timeline


def row(pid, start, elapsed, setup, first_step=None, first_compute=None):
    return {"pid": pid, "started_at": start, "elapsed_s": elapsed, "setup_s": setup,
            **({"first_step_s": first_step} if first_step is not None else {}),
            **({"first_compute_s": first_compute} if first_compute is not None else {})}


def test_phases_setup_and_gaps_per_worker_process():
    results = [row(1, 100.0, 10.0, 4.0, 5.0, 4.5), row(1, 111.0, 6.0, 0.1, 1.1, 0.2), row(1, 120.0, 6.0, 0.3, 1.3, 0.4),
               row(2, 101.0, 12.0, 5.0, 6.0), {"pid": 3, "val_acc": 0.5}]  # a trial of another trainable
    s = worker_timeline(results, wall_s=30.0, workers=2, phase_compute_s=5.0)
    assert s["trials"] == 4 and s["untimed"] == 1 and s["processes"] == 2
    assert s["phase_s"] == 34.0 and s["utilisation"] == round(34.0 / 60.0, 3)
    assert s["setup_fresh_s"] == 4.5 and s["setup_warm_s"] == 0.2  # medians of (4, 5) and (0.1, 0.3)
    assert s["first_step_warm_s"] == {"median": 1.2, "max": 1.3}
    assert s["first_compute_warm_s"] == {"median": 0.3, "max": 0.4}  # warm phases only: not the fresh 4.5
    assert s["gap_s"] == {"median": 2.0, "max": 3.0, "total": 4.0}  # 110 -> 111 and 117 -> 120 on pid 1
    assert s["ideal_s"] == 10.0 and s["wall_over_ideal"] == 3.0
    # phases of different lengths: the ideal is their compute together over the workers
    mixed = worker_timeline(results, wall_s=30.0, workers=2, phase_compute_s=5.0, compute_s=12.0)
    assert mixed["ideal_s"] == 6.0 and mixed["wall_over_ideal"] == 5.0
    text = describe(s, 30.0, 2)
    assert "57% of the wall" in text and "wall / ideal 3.00" in text and "2 worker processes for 4 phases" in text
    assert "a warm phase computes after 0.30s (max 0.40s) and takes its first step after 1.20s (max 1.30s" in text
    assert "lead_in_s" not in s and "from the run's start" not in text
    # given the run's start: Tune's lead-in before the first phase and the tail after the last one (pid 2 ends at 113)
    timed = worker_timeline(results, wall_s=30.0, workers=2, started_at=97.5)
    assert timed["lead_in_s"] == 2.5 and timed["tail_s"] == 97.5 + 30.0 - 126.0
    assert "from the run's start to the first phase 2.50s, from the last phase's end to the run's end 1.50s" in describe(
        timed, 30.0, 2)


def test_the_phases_own_compute_gives_a_ratio_free_of_the_machines_drift():
    results = [{**row(1, 100.0, 10.0, 4.0, 5.0), "compute_s": 5.0}, {**row(2, 101.0, 12.0, 5.0, 6.0), "compute_s": 7.0}]
    s = worker_timeline(results, wall_s=30.0, workers=2)
    assert s["in_phase_compute_s"] == 12.0 and s["wall_over_in_phase"] == 5.0  # 30 s over 12 s on 2 workers
    assert "wall / the phases' own compute 5.00" in describe(s, 30.0, 2)
    # one phase without it (another trainable, an older result): no ratio from part of the run
    partial = worker_timeline(results + [row(3, 100.0, 3.0, 0.1)], wall_s=30.0, workers=2)
    assert "in_phase_compute_s" not in partial and "wall_over_in_phase" not in partial


def test_reports_and_checkpoints_add_up_where_every_phase_times_them():
    results = [{**row(1, 100.0, 10.0, 4.0, 5.0), "report_s": 0.25}, {**row(2, 101.0, 12.0, 5.0, 6.0), "report_s": 0.5}]
    s = worker_timeline(results, wall_s=30.0, workers=2)
    assert s["report_s"] == 0.75
    assert "sending results and checkpoints 0.75s in all" in describe(s, 30.0, 2)
    partial = worker_timeline(results + [row(3, 100.0, 3.0, 0.1)], wall_s=30.0, workers=2)
    assert "report_s" not in partial and "sending results" not in describe(partial, 30.0, 2)


def test_the_rounds_share_counts_only_time_a_round_is_asked_and_no_phase_descends():
    # serial: phase A [0, 10] (steps from 1), round [10, 20], phase B [21, 30] (its setup and screening to 23)
    serial = [{"started_at": 0, "first_step_s": 1, "elapsed_s": 10}, {"started_at": 21, "first_step_s": 2, "elapsed_s": 9}]
    assert round_wait(serial, [(10, 20)], started_at=0, wall_s=30) == {"wait_s": 10.0, "share": 0.333, "rounds_s": 10.0}
    # overlapped: B starts at 10 and descends from 11 while the round is asked; the last phase waits 3 s at its end
    overlap = [{"started_at": 0, "first_step_s": 1, "elapsed_s": 10},
               {"started_at": 10, "first_step_s": 1, "elapsed_s": 15, "wait_s": 3}]
    assert round_wait(overlap, [(10, 25)], started_at=0, wall_s=25) == {"wait_s": 4.0, "share": 0.16, "rounds_s": 15.0}


def test_no_timed_results_is_a_summary_not_an_error():
    s = worker_timeline([{"val_acc": 1.0}, {"pid": 1, "started_at": float("nan"), "elapsed_s": 1.0}], 10.0, 2)
    assert s["trials"] == 0 and s["untimed"] == 2 and s["utilisation"] == 0.0 and "ideal_s" not in s
    assert "-" in describe(s, 10.0, 2)


@pytest.mark.slow
def test_real_phases_under_tune_report_their_timing_and_warm_workers_skip_the_setup(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    from ray_llm_search import LLMSearch
    from trainables.data import bbc_news_spec
    from trainables.text_prompt import train_text_prompt

    class NoLLM:  # one generation: the mentor is never asked
        style = "completion"
        usage: dict = {}
        faults: dict = {}

        def propose(self, meta_prompt, n):
            raise AssertionError("not asked")

    seeds = ["the topic of this news article is", "news category:", "this text is about", "classify the article"]
    search = LLMSearch(NoLLM(), "Classify BBC news by topic.", seeds, metric="val_acc", mode="max", population=4,
                       generations=1, log_dir=str(tmp_path / "log"))
    config = {"data": bbc_news_spec(shots=2, val_shots=2, test_size=10, seed=0), "steps": 2, "eval_every": 1,
              "batch_size": 4, "max_length": 32, "prompt_length": 4}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        analysis = tune.run(train_text_prompt, config=config, search_alg=search, num_samples=4,
                            resources_per_trial={"cpu": 1}, storage_path=str(tmp_path), name="t", verbose=0,
                            reuse_actors=True)
    finally:
        ray.shutdown()
    results = [t.last_result for t in analysis.trials]
    assert all(r["elapsed_s"] >= r["first_step_s"] >= r["first_compute_s"] >= r["setup_s"] >= 0 for r in results)
    # the steps' and evaluations' own time: inside the phase, after its setup
    assert all(0 < r["compute_s"] <= r["elapsed_s"] - r["setup_s"] for r in results)
    # sending its earlier results (step 0's and step 1's at least, with their checkpoints) took time, which is
    # not counted as compute
    assert all(0 < r["report_s"] and r["compute_s"] + r["report_s"] <= r["elapsed_s"] - r["setup_s"] for r in results)
    s = worker_timeline(results, wall_s=60.0, workers=2)
    assert s["report_s"] == round(sum(r["report_s"] for r in results), 2)
    assert s["trials"] == 4 and s["untimed"] == 0
    # 4 phases on at most 2 reused actors: the backbone loaded at most twice, not four times. Tune may run all
    # four on the first actor when they end before the second actor's process has started (CI, 2026-12-02,
    # once the plain BERT encoder made a fresh setup about 2 s): 1 process then, never 3 or 4.
    assert 1 <= s["processes"] <= 2, s
    # a new process imports torch and loads MiniLM inside its first phase; a warm one finds them cached
    # (relative, not a fixed time: on a loaded machine both take longer; idle: about 0.05 s and 4 s)
    assert s["setup_warm_s"] * 4 < s["setup_fresh_s"]


@pytest.mark.slow
def test_the_overlap_benchmark_screens_only_after_the_round_and_steps_during_it_only_when_overlapping(tmp_path):
    """examples/bench_overlap.py with the real MiniLM phase and the real SmolLM2 mentor, one short repetition."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "overlap.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "bench_overlap.py"), "--reps", "1",
                           "--steps", "4", "--continuations", "4", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "overlap / serial" in proc.stdout
    result = json.loads(out.read_text())
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"serial", "overlap"} and all(r["wall_s"] > 0 for r in runs.values())
    for run in runs.values():  # candidates are screened once they exist, in both orders
        assert run["phase"]["screened_at"] >= run["round"]["ended"]  # when the screening began
    # serial: the first step after the round; overlap: the first step while the round still runs
    assert runs["serial"]["phase"]["first_step_at"] >= runs["serial"]["phase"]["screened_at"]
    assert runs["overlap"]["phase"]["first_step_at"] < runs["overlap"]["round"]["ended"]
    assert result["ratio"] == pytest.approx(runs["overlap"]["wall_s"] / runs["serial"]["wall_s"])
