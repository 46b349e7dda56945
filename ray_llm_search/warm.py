"""Worker processes for Tune's trials, started (and their imports done) before ``tune.run`` needs them.

A Tune trial runs in an actor, and an actor gets a worker process that Ray starts when the actor is created:
Python, Ray's worker boot, Tune's wrapper and the trainable's imports (torch alone is about 2 s) come before
the trial's first line. On a 2-core machine that is 6-7 s of every run in which no gradient work is done.
Ray keeps a pool of idle worker processes, but Tune gives its trainable actors a runtime environment of their
own (``env_vars``; ``ray.tune.execution.class_cache``), and an idle process is only handed to an actor with the
same runtime environment, so the processes Ray prestarts at ``ray.init`` are never used for a trial.

Two steps, both optional and both safe to skip:

- ``init_options(trainable)``: keyword arguments for ``ray.init`` where this process starts Ray: every worker
  process imports the trainable's module (and Tune's wrapper) before it accepts work (Ray's
  ``preload_python_modules``), and Ray's own prestart of task workers (never used by Tune's actors, and on a
  small machine competing for the CPU with the rest of the start) is left out. The modules must be importable
  by a new Python process (installed, or on ``PYTHONPATH``): a worker that cannot import one logs why in its
  ``.err`` file (Ray's session logs) and imports it when its trial arrives, as without preloading.
- ``prestart_trial_workers(count)``: asks this node's raylet to start ``count`` worker processes with the
  runtime environment Tune gives its trainable actors, now. They boot (and import, given ``init_options``)
  while the driver does something else, e.g. loads the mentor LLM; the first trials' actors then start in
  them. Ray kills a prestarted process that no actor took after ``keep_alive_s``.

    ray.init(num_cpus=2, **warm.init_options(train_text_prompt))
    warm.prestart_trial_workers(workers)
    llm.load()                                   # the worker processes start meanwhile
    tune.run(train_text_prompt, ..., reuse_actors=True)

``prestart_trial_workers`` uses the raylet's ``PrestartWorkers`` call (Ray's core worker has a method that makes
it), which Ray does not document for users: where it is missing or refused, or where the job has a
runtime environment of its own (which would change the actors' environment), nothing is started, a debug
line is logged and the function returns 0; Tune then starts its actors' processes as it always does. The
processes start on the driver's node: on a cluster, trials scheduled elsewhere start as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

# What a worker imports for Tune's function trainables before the trainable's own module.
TUNE_MODULES = ("ray.tune.trainable.function_trainable",)
DEFAULT_KEEP_ALIVE_S = 600.0


def trainable_modules(*trainables: Callable | type | str) -> list[str]:
    """The modules a worker must import to run ``trainables`` (functions, classes or module names), Tune's
    wrapper first; a trainable defined in a script (``__main__``) has no module a worker could import."""
    modules = list(TUNE_MODULES)
    for t in trainables:
        name = t if isinstance(t, str) else getattr(t, "__module__", None)
        if not name or name == "__main__" or name.startswith("__"):
            continue
        if name not in modules:
            modules.append(name)
    return modules


def init_options(*trainables: Callable | type | str, prestart_task_workers: bool = False) -> dict:
    """Keyword arguments for ``ray.init`` (only where it starts a new local Ray: a running cluster's settings
    cannot change) that make every worker process import the modules of ``trainables`` before it takes work.

    ``prestart_task_workers=False`` (default) also leaves out Ray's start of one idle task worker per CPU at
    ``ray.init``: Tune's trial actors never run in them (their runtime environment differs), and with the modules
    preloaded each would import torch too. Pass ``True`` for a driver that also runs many Ray tasks."""
    config: dict = {"preload_python_modules": trainable_modules(*trainables)}
    if not prestart_task_workers:
        config["prestart_worker_first_driver"] = False
    return {"_system_config": config}


def tune_actor_env() -> dict:
    """The runtime environment Tune gives its trainable actors (``_ActorClassCache.get`` in Ray Tune)."""
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE

    env_vars = dict(DEFAULT_ENV_VARS)
    for name in ENV_VARS_TO_PROPAGATE:
        if name in os.environ:
            env_vars[name] = os.environ[name]
    return {"env_vars": env_vars}


def prestart_trial_workers(count: int, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S, timeout_s: float = 10.0) -> int:
    """Start ``count`` worker processes on this node for Tune's trainable actors; returns how many were asked
    for (0 where none could be: see the module docstring). Call it after ``ray.init`` and before ``tune.run``,
    as early as possible: a process takes seconds to boot and import."""
    count = int(count)
    if count < 1:
        return 0
    try:
        import ray

        if not ray.is_initialized():
            logger.debug("prestart_trial_workers: no Ray session (call ray.init first)")
            return 0
        job_env = ray.get_runtime_context().runtime_env
        if job_env and any(v for k, v in dict(job_env).items() if k != "config"):
            # Ray merges the job's runtime environment into the actors'; the merged one would have to be rebuilt
            # here exactly as Ray's core worker does, or the raylet would keep the processes for nobody.
            logger.debug("prestart_trial_workers: the job has a runtime environment (%s); not prestarting",
                         sorted(dict(job_env)))
            return 0
        _prestart(count, keep_alive_s, timeout_s)
        return count
    except Exception as e:  # an older or newer Ray without the call, a refused request: Tune starts them itself
        logger.debug("prestart_trial_workers: not available (%s: %s)", type(e).__name__, e)
        return 0


def _prestart(count: int, keep_alive_s: float, timeout_s: float) -> None:
    import ray
    from ray._private.grpc_utils import init_grpc_channel
    from ray._private.utils import get_runtime_env_info, parse_runtime_env_for_task_or_actor
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    worker = ray._private.worker.global_worker
    env = parse_runtime_env_for_task_or_actor(tune_actor_env())
    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON,
        job_id=worker.current_job_id.binary(),
        runtime_env_info=get_runtime_env_info(env, is_job_runtime_env=False, serialize=False),
        keep_alive_duration_secs=max(1, int(keep_alive_s)),
        num_workers=count,
    )
    channel = init_grpc_channel(f"{worker.node.node_ip_address}:{worker.node.node_manager_port}", asynchronous=False)
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=timeout_s)
    finally:
        channel.close()


__all__ = ["init_options", "prestart_trial_workers", "trainable_modules", "tune_actor_env"]
