"""The driver of ``tests/test_cluster_storage.py``: joins a running cluster (``--address``; the auth token and
the object store's credentials come from the environment, set before Ray is imported), runs a toy search of 3
generations x 2 phases with ``storage_path`` on the object store, even generations on the ``side0`` node and odd
ones on ``side1`` (custom resources), and writes what the test checks to ``--out`` as JSON: the trajectories,
every trial's results, the trials' statuses and errors, and the search's records."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="cluster_s3")
    p.add_argument("--placement", choices=["sides", "free"], default="sides")
    p.add_argument("--max-failures", type=int, default=0)
    p.add_argument("--step-sleep-s", type=float, default=0.0)
    args = p.parse_args()

    import ray
    import storage_phase
    import torch  # noqa: F401  (before Ray connects: see docs/cluster.md, "Ray 2.60 notes")
    from ray import tune

    from ray_llm_search import LLMSearch
    from ray_llm_search.testing import ScriptedLLM

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(q for q in (here, os.environ.get("PYTHONPATH")) if q)
    ray.init(address=args.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, **storage_phase.CREDENTIALS}})
    nodes = {n["NodeID"]: ("side0" if "side0" in n["Resources"] else "side1") for n in ray.nodes() if n.get("Alive")}
    search = LLMSearch(ScriptedLLM(words="a new start"), "Toy task.", ["seed one", "seed two"], metric="val_acc",
                       mode="max", population=2, generations=3, elites=1, log_dir=args.log_dir)
    results: dict[str, list] = {}

    class Keep(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            results.setdefault(trial.trial_id, []).append(
                {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool, type(None)))})

    # even generations on side0 (the head), odd ones on side1: every elite runs on the other node than its parent
    trainable = tune.with_resources(storage_phase.toy_phase, lambda config: tune.PlacementGroupFactory(
        [{"CPU": 1, f"side{int(config.get('generation', 0)) % 2}": 1}]))
    if args.placement == "free":
        trainable = tune.with_resources(storage_phase.toy_phase, {"cpu": 1})
    started = time.monotonic()
    analysis = tune.run(trainable, name=args.name, storage_path=args.storage,
                        config={"steps": 6, "eval_every": 2, "marker_path": args.marker,
                                "step_sleep_s": args.step_sleep_s},
                        search_alg=search, num_samples=search.total_trials, callbacks=[Keep()],
                        max_failures=args.max_failures, raise_on_failed_trial=False, verbose=0)
    out = {"wall_s": round(time.monotonic() - started, 1), "nodes": nodes, "llm_calls": search.llm.calls,
           "trajectories": storage_phase.trajectories(search), "results": results, "records": len(search.records),
           "trials": {t.trial_id: t.status for t in analysis.trials},
           "errors": [open(t.error_file).read()[-3000:] for t in analysis.trials
                      if t.status == "ERROR" and t.error_file and os.path.exists(t.error_file)]}
    with open(args.out, "w") as f:
        json.dump(out, f)
    ray.shutdown()


if __name__ == "__main__":
    main()
