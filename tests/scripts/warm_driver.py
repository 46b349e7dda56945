"""Driver for tests/test_warm.py: a new local Ray whose workers preload ``warm_target``, one prestarted trial
worker process, then two ``tune.run`` calls of ``warm_target.trainable``; prints
one JSON line with what happened. ``WARM_MARK`` and a ``PYTHONPATH`` holding this folder come from the test."""

import json
import os
import tempfile
import time

import ray
from ray import tune

from ray_llm_search import warm


def worker_marks() -> list[dict]:
    """The imports of warm_target by processes other than this driver."""
    path = os.environ["WARM_MARK"]
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [m for m in (json.loads(line) for line in f if line.strip()) if m["pid"] != os.getpid()]


def run(trainable, storage: str, asked: int) -> dict:
    started = time.time()
    check = warm.PrestartCheck(asked)
    analysis = tune.run(trainable, num_samples=2, resources_per_trial={"cpu": 1}, reuse_actors=True, verbose=0,
                        storage_path=storage, callbacks=[check])
    return {"started": started, "pids": sorted({t.last_result["pid"] for t in analysis.trials}),
            "check": check.summary()}


def main() -> None:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, **warm.init_options("warm_target"))
    asked = warm.prestart_trial_workers(1, keep_alive_s=60)
    deadline = time.time() + 90
    while asked and not worker_marks() and time.time() < deadline:  # the prestarted process imports it
        time.sleep(0.2)
    before = worker_marks()
    import warm_target

    with tempfile.TemporaryDirectory() as storage:
        first = run(warm_target.trainable, storage, asked)
        # a new actor (the first run's ended with its run); nothing was prestarted for it: nothing to check
        second = run(warm_target.trainable, storage, 0)
    print(json.dumps({"asked": asked, "before": before, "after": worker_marks(), "first": first, "second": second}))


if __name__ == "__main__":
    main()
