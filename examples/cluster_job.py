"""The search a Ray cluster runs as a job: submitted by ``examples/submit_cluster.py`` (``ray job submit``).

It runs on the cluster's head node as the job's driver: ``LLMSearch`` and the mentor LLM live here, and
Tune spreads the trials (gradient phases) over every node. Run by hand against a running cluster too:

    RAY_ADDRESS=auto python examples/cluster_job.py --storage /mnt/shared/ray_results
    python examples/cluster_job.py --trainable probe --llm scripted --storage /mnt/shared/ray_results

``--trainable text`` (default) is the quickstart's BBC News search (soft prompts on MiniLM); ``--trainable
probe`` is a trainable that only reports the contract keys plus the node, process and host it ran on, and
``--llm scripted`` a mentor that answers at once: together they check a cluster's plumbing in seconds.

``--storage`` is Tune's ``storage_path``: on several nodes a cloud URI (``s3://bucket/prefix``, ``gs://...``) or a
shared filesystem path. ``--log-dir`` is ``LLMSearch``'s ``log_dir`` (generation summaries, ``best.json``,
TensorBoard, the LLM journal), a folder of the driver's. With a URI the phases keep their prompt vectors in their
trial folders under it, which every node reads; with a shared path they keep them in ``<log-dir>/vectors``, so
``--log-dir`` must then be on the shared mount: by default it is the experiment folder under ``--storage``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search.flags import add_llm_flags, add_search_flags, llm_from_flags, refuse_model_flag  # noqa: E402
from ray_llm_search.testing import ScriptedLLM  # noqa: E402  (a mentor that answers at once, for checking a cluster)
from trainables.benchmark_data import BENCHMARKS  # noqa: E402

TASK, SEEDS = BENCHMARKS["bbc"].task, list(BENCHMARKS["bbc"].seed_prompts)
SUMMARY_MARK = "CLUSTER_JOB_SUMMARY "


def probe_trainable(config: dict) -> None:
    """Reports the contract keys (``val_acc``, ``loss``, ``prompt_text``, ``step``) and where it ran."""
    import ray
    from ray import tune

    # Prefixed: Tune fills in its own node_ip, pid and hostname, and on one machine two nodes share an IP.
    where = {"probe_node_id": ray.get_runtime_context().get_node_id(), "probe_pid": os.getpid(),
             "probe_host": socket.gethostname()}
    text = config["prompt_init"]
    base = (sum(map(ord, text)) % 100) / 200
    for step in range(int(config.get("steps", 3)) + 1):
        time.sleep(float(config.get("sleep_s", 0.5)))
        tune.report({"val_acc": base + 0.1 * step, "loss": 1.0 / (step + 1), "prompt_text": f"{text} {step}",
                     "step": step, **where})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainable", choices=["text", "probe"], default="text")
    add_llm_flags(p, choices=("local", "openai", "scripted"))
    refuse_model_flag(p)
    add_search_flags(p, steps=12, eval_every=4)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--sleep-s", type=float, default=0.5, help="probe trainable: seconds per step")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--storage", default=os.path.expanduser("~/ray_results"),
                   help="Tune's storage_path: a shared path or a cloud URI (s3://..., gs://...)")
    p.add_argument("--log-dir", default=None, help="LLMSearch's log_dir, the driver's folder (on the shared mount "
                   "where --storage is a path)")
    p.add_argument("--name", default=None)
    p.add_argument("--summary", default=None, help="also write the run's summary JSON here")
    return p.parse_args(argv)


def _is_uri(path: str) -> bool:
    return "://" in path


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray import tune

    from ray_llm_search import LLMSearch

    name = args.name or "cluster_" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    storage = args.storage if _is_uri(args.storage) else os.path.abspath(os.path.expanduser(args.storage))
    if args.log_dir:
        log_dir = args.log_dir
    elif not _is_uri(storage):
        log_dir = os.path.join(storage, name)  # the experiment folder: Tune's curves and ours side by side
    else:
        log_dir = os.path.expanduser(f"~/ray_results/llm_search/{name}")
        print(f"LLMSearch's records go to {log_dir} on the driver's node; the phases' vectors to their trial "
              f"folders under {storage}", flush=True)

    if args.trainable == "probe":
        trainable = probe_trainable
        base = {"steps": 3, "sleep_s": args.sleep_s}
    else:
        from trainables.text_prompt import train_text_prompt

        trainable = train_text_prompt
        base = {"data": BENCHMARKS["bbc"].data_spec(shots=args.shots, val_shots=8, test_size=50, seed=args.seed),
                "steps": args.steps, "eval_every": args.eval_every, "lr": 0.05, "batch_size": 16,
                "prompt_length": 8, "max_length": 64}

    if args.llm == "scripted":
        llm = ScriptedLLM(words="the news topic of round")
    else:
        llm = llm_from_flags(args)
    search = LLMSearch(llm, TASK, SEEDS, metric="val_acc", mode="max", population=args.population,
                       generations=args.generations, elites=args.elites, max_prompt_words=12, seed=args.seed,
                       log_dir=log_dir)

    # torch must be loaded before this process connects: in a `ray job submit` driver, importing it after
    # ray.init() (Tune's TensorBoard logger does) aborted with "Intel oneMKL FATAL ERROR: Cannot load
    # libtorch_cpu.so" (Ray 2.60, torch 2.14.1); before ray.init() it loads fine.
    import torch  # noqa: F401

    ray.init(log_to_driver=False)  # the job's cluster (RAY_ADDRESS), or a new local one when run by hand
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    print(f"cluster: {len(nodes)} nodes, {ray.cluster_resources().get('CPU', 0):g} CPUs; storage {storage}; "
          f"LLMSearch log_dir {log_dir}", flush=True)
    started = time.time()
    analysis = tune.run(
        trainable, name=name, storage_path=storage, config=base, search_alg=search,
        num_samples=search.total_trials, metric="val_acc", mode="max", verbose=1,
        resources_per_trial={"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
        # not reused: a worker that finishes first would take every phase, and the job shows the cluster's reach
    )
    results = [t.last_result or {} for t in analysis.trials]
    best = search.best() or {}
    summary = {
        "name": name,
        "wall_s": round(time.time() - started, 1),
        "trials": len(analysis.trials),
        "errored": sum(t.status == "ERROR" for t in analysis.trials),
        "generations": len(search.records),
        "cluster_nodes": nodes,
        "trial_nodes": sorted({r["probe_node_id"] for r in results if r.get("probe_node_id")}),
        "trial_pids": sorted({r["probe_pid"] for r in results if r.get("probe_pid")}),
        "trial_ips": sorted({r["node_ip"] for r in results if r.get("node_ip")}),
        "llm_calls": int(llm.usage.get("calls", 0)),
        "llm_faults": dict(llm.faults),
        "api_key_env_set": bool(args.api_key_env and os.environ.get(args.api_key_env)),  # never the value
        "best_value": best.get("value"),
        "best_prompt": best.get("prompt_text"),
        "storage": storage,
        "job_cwd": os.getcwd(),  # under Ray's runtime_resources when the job came with a working_dir
        "log_dir": log_dir,
    }
    print(SUMMARY_MARK + json.dumps(summary, sort_keys=True), flush=True)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    return summary


if __name__ == "__main__":
    main()
