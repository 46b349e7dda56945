"""A search driver that ``tests/test_resume.py`` starts as a process and SIGKILLs mid-run.

    python tests/scripts/resume_driver.py --address ADDR --api tuner|run --storage DIR --name NAME \\
        --log-dir DIR --calls FILE

It joins the test's Ray cluster, runs an ``LLMSearch`` (population 2, 3 generations, the call-logging fake
mentor) over ``rls_helpers.trivial_phase`` with ``Tuner.fit`` or ``tune.run``, and, if it is not killed,
prints ``DONE``. ``search_args``/``base_config`` are imported by the test, which resumes with the same.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

TASK = "Classify a BBC news article by topic."
SEEDS = ["the topic of this article is", "news category:"]


def search_args(log_dir: str) -> dict:
    return dict(task_description=TASK, seed_prompts=SEEDS, metric="val_acc", mode="max", population=2,
                generations=3, elites=1, log_dir=log_dir)


def base_config() -> dict:
    # Each phase reports steps 0..3 with a Tune checkpoint, 0.4 s apart: long enough to be killed inside.
    return {"steps": 3, "sleep_s": 0.4, "checkpoint": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--api", choices=("tuner", "run"), required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--calls", required=True)
    args = parser.parse_args()

    import ray
    import rls_helpers
    from ray import tune

    from ray_llm_search import LLMSearch

    # workers import rls_helpers; an object store's endpoint settings and (the tests' dummy) credentials reach them
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(address=args.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": HERE, **aws}})
    search = LLMSearch(rls_helpers.CallLogLLM(args.calls), **search_args(args.log_dir))
    if args.api == "tuner":
        tuner = tune.Tuner(
            rls_helpers.trivial_phase,
            param_space=base_config(),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=search.total_trials),
            run_config=tune.RunConfig(name=args.name, storage_path=args.storage, verbose=0),
        )
        tuner.fit()
    else:
        tune.run(rls_helpers.trivial_phase, config=base_config(), search_alg=search, num_samples=search.total_trials,
                 name=args.name, storage_path=args.storage, resources_per_trial={"cpu": 1}, verbose=0)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
