"""Benchmark: the searcher's own cost, and Tune's per-trial overhead.

    python examples/bench_searcher.py                         # 64 x 10 generations, driven directly
    python examples/bench_searcher.py --tune --population 8 --generations 3   # real tune.run, trivial trainable

Direct mode feeds ``LLMSearch`` the events Tune would (suggest, 5 results and a completion per trial) with an
instant scripted LLM, and prints the searcher's CPU time per event and its saved state's size per
generation (bytes per trial should stay flat: the state grows linearly). Tune mode runs a trainable that
only reports, so wall time per trial is Tune's overhead.

``drive`` (``ray_llm_search.testing.scale_run``) and ``tune_overhead`` return their numbers as a dict.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search import LLMSearch  # noqa: E402
from ray_llm_search.testing import ScriptedLLM, scale_run  # noqa: E402


def drive(population: int, generations: int, results_per_trial: int, log_dir: str, max_wait_s: float = 60.0) -> dict:
    """The searcher's cost at scale: ``ray_llm_search.testing.scale_run`` (``tests/test_scale.py`` asserts it)."""
    return scale_run(population, generations, results_per_trial, log_dir, max_wait_s)


def print_drive(r: dict) -> None:
    print(f"population {r['population']} x {r['generations']} generations, {r['trials']} trials, "
          f"{r['events']} events, {r['llm_calls']} LLM rounds")
    print(f"searcher CPU per event: {r['cpu_ms_per_event']:.3f} ms (bound: 1 ms); "
          f"whole driver loop incl. summaries: {r['loop_ms_per_event']:.3f} ms/event")
    print(f"{'generations':>11} | {'trials':>6} | {'state bytes':>11} | {'bytes/trial':>11}")
    for done, trials, size in r["sizes"]:
        print(f"{done:>11} | {trials:>6} | {size:>11} | {size / trials:>11.0f}")
    per_trial = [size / trials for _, trials, size in r["sizes"]]
    print(f"bytes/trial, last over first: {per_trial[-1] / per_trial[0]:.2f} (1.0 = linear growth)")


def tune_overhead(population: int, generations: int, results_per_trial: int = 3) -> dict:
    """A real ``tune.run`` of a trainable that only reports; returns wall and overhead per trial."""
    import ray
    from ray import tune

    def trivial(config):
        for step in range(results_per_trial):
            tune.report({"acc": 0.5, "loss": 1.0, "prompt_text": config["prompt_init"], "step": step})

    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            search = LLMSearch(ScriptedLLM(words="candidate about news topics"), "Benchmark task.", ["seed prompt"], metric="acc", mode="max",
                               population=population, generations=generations, log_dir=tmp)
            t = time.time()
            analysis = tune.run(trivial, config={}, search_alg=search, num_samples=search.total_trials,
                                storage_path=tmp, name="overhead", verbose=0, resources_per_trial={"cpu": 1})
            wall = time.time() - t
            trial_s = sum(tr.last_result.get("time_total_s", 0.0) for tr in analysis.trials if tr.last_result)
        cpus = int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()
    n = search.total_trials
    return {
        "trials": n,
        "cpus": cpus,
        "wall_s": wall,
        "wall_s_per_trial": wall / n,
        "cpu_s_overhead_per_trial": wall * cpus / n,
        "trainable_s_per_trial": trial_s / n,
        "records": len(search.records),
        "cpu_ms_per_event": 1000 * search.cpu_seconds_per_event,
    }


def print_tune(r: dict) -> None:
    print(f"{r['trials']} trivial trials on {r['cpus']} CPUs in {r['wall_s']:.1f}s: {r['wall_s_per_trial']:.2f}s "
          f"wall per trial, {r['cpu_s_overhead_per_trial']:.2f} CPU-seconds of overhead per trial "
          f"(the trainable's own time: {r['trainable_s_per_trial']:.3f}s per trial); "
          f"searcher CPU {r['cpu_ms_per_event']:.3f} ms/event")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--results-per-trial", type=int, default=5)
    p.add_argument("--tune", action="store_true", help="measure Tune's per-trial overhead with a real tune.run")
    args = p.parse_args()
    if args.tune:
        print_tune(tune_overhead(args.population, args.generations))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print_drive(drive(args.population, args.generations, args.results_per_trial, tmp))


if __name__ == "__main__":
    main()
