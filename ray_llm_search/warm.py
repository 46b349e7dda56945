"""EXPERIMENTAL, opt-in: worker processes for Tune's trials, started (and their imports done) before ``tune.run``
needs them.

Nothing in the library calls this module unless asked: the comparison uses it only with ``--warm``; the
quickstart turns it on (``--no-warm`` turns it off). It relies on parts of Ray that Ray does not document for
users (``ray._private``, the raylet's ``PrestartWorkers`` call, ``_system_config``) and was tested on the Ray
versions in ``TESTED_RAY`` only: on any other both steps do nothing and log a WARNING, as they do whenever they
fall back. Ray has no documented way to start a worker process for an actor before the actor exists (a
``runtime_env``'s ``worker_process_setup_hook`` runs in the process Ray starts for the actor: it moves nothing).

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
- ``PrestartCheck(asked)``: a Tune callback that checks, at each worker process's first result, whether the
  process is one this module asked for (it started between the ``prestart_trial_workers`` call and ``tune.run``),
  an older one (e.g. left idle by an earlier run) or one Tune started, and logs it either way (INFO when a
  prestarted process took the trial, WARNING otherwise); ``summary()`` counts them.

    ray.init(num_cpus=2, **warm.init_options(train_text_prompt))
    asked = warm.prestart_trial_workers(workers)
    llm.load()                                   # the worker processes start meanwhile
    tune.run(train_text_prompt, ..., reuse_actors=True, callbacks=[warm.PrestartCheck(asked)])

``prestart_trial_workers`` uses the raylet's ``PrestartWorkers`` call (Ray's core worker has a method that makes
it), which Ray does not document for users: where it is missing or refused, or where the job has a
runtime environment of its own (which would change the actors' environment), nothing is started, a WARNING
is logged and the function returns 0; Tune then starts its actors' processes as it always does. The
processes start on the driver's node: on a cluster, trials scheduled elsewhere start as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# What a worker imports for Tune's function trainables before the trainable's own module.
TUNE_MODULES = ("ray.tune.trainable.function_trainable",)
DEFAULT_KEEP_ALIVE_S = 600.0
_ASKED_AT: list[float] = []  # when prestart_trial_workers last asked the raylet (PrestartCheck's default)
# The Ray versions (major.minor) this module was tested on (tests/test_warm.py, the quickstart); on any other it
# does nothing.
TESTED_RAY = ("2.60",)


def ray_version_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Ray's) is one of ``TESTED_RAY``; a WARNING where it is not."""
    if version is None:
        try:
            import ray

            version = ray.__version__
        except ImportError:
            version = "none"
    if ".".join(str(version).split(".")[:2]) in TESTED_RAY:
        return True
    logger.warning("ray_llm_search.warm is experimental and was tested on Ray %s only, not %s: not prestarting "
                   "(Tune starts its worker processes as usual)", ", ".join(TESTED_RAY), version)
    return False


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
    preloaded each would import torch too. Pass ``True`` for a driver that also runs many Ray tasks. ``{}``
    (nothing changes) on a Ray outside ``TESTED_RAY``."""
    if not ray_version_tested():
        return {}
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
    if not ray_version_tested():
        return 0
    try:
        import ray

        if not ray.is_initialized():
            logger.warning("prestart_trial_workers: no Ray session (call ray.init first); not prestarting")
            return 0
        job_env = ray.get_runtime_context().runtime_env
        if job_env and any(v for k, v in dict(job_env).items() if k != "config"):
            # Ray merges the job's runtime environment into the actors'; the merged one would have to be rebuilt
            # here exactly as Ray's core worker does, or the raylet would keep the processes for nobody.
            logger.warning("prestart_trial_workers: the job has a runtime environment (%s); not prestarting",
                           sorted(dict(job_env)))
            return 0
        asked_at = time.time()
        _prestart(count, keep_alive_s, timeout_s)
        _ASKED_AT[:] = [asked_at]
        return count
    except Exception as e:  # an older or newer Ray without the call, a refused request: Tune starts them itself
        logger.warning("prestart_trial_workers: not available (%s: %s); Tune starts its worker processes as usual",
                       type(e).__name__, e)
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


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` of this machine started (seconds since the epoch), or ``None`` where that cannot be
    read (no such process, or neither ``/proc`` nor psutil). On Linux from ``/proc/<pid>/stat`` against the boot
    clock, to the kernel's tick (psutil's figure rests on the boot time in whole seconds: off by up to one)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux, and no such process
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return float(psutil.Process(int(pid)).create_time())
    except Exception:  # no psutil, no such process, or no access
        return None


def _callback_base() -> type:
    try:
        from ray.tune import Callback

        return Callback
    except ImportError:  # no Tune: PrestartCheck is still a plain object
        return object


class PrestartCheck(_callback_base()):
    """A Tune callback: did the prestarted worker processes take the trials? At the first result from each worker
    process (Tune reports its ``pid`` and ``node_ip``), the process counts as ``"prestarted"`` when it started
    between ``asked_at`` (default: when ``prestart_trial_workers`` last asked) and ``tune.run`` (``setup``),
    ``"earlier"`` when it started before ``asked_at`` (a process an earlier run left idle), ``"tune"`` when it
    started after ``tune.run`` did; logged either way (INFO for a prestarted one, WARNING otherwise) and counted
    in ``summary()``. ``asked``: what ``prestart_trial_workers`` returned (0: nothing to check, nothing logged)."""

    def __init__(self, asked: int, asked_at: float | None = None) -> None:
        self.asked = int(asked)
        self.asked_at = asked_at if asked_at is not None else (_ASKED_AT[0] if _ASKED_AT else None)
        self.since: float | None = None
        self.processes: dict[int, str] = {}  # pid: "prestarted", "earlier", "tune" or "unknown"

    def setup(self, **info) -> None:
        self.since = time.time()

    def on_trial_result(self, iteration=None, trials=None, trial=None, result=None, **info) -> None:
        result = result or {}
        pid = result.get("pid")
        if self.asked < 1 or pid is None or int(pid) in self.processes:
            return
        pid = int(pid)
        since = self.since if self.since is not None else time.time()
        started = process_started_at(pid) if _this_node(result.get("node_ip")) else None
        name = getattr(trial, "trial_id", "?")
        if started is None:
            self.processes[pid] = "unknown"
            logger.info("warm: trial %s runs in process %d, which cannot be checked here (another node?)", name, pid)
        elif started < since and (self.asked_at is None or started >= self.asked_at - 0.05):
            self.processes[pid] = "prestarted"
            logger.info("warm: trial %s runs in a prestarted worker process (pid %d, started %.1f s before tune.run)",
                        name, pid, since - started)
        elif started < since:
            self.processes[pid] = "earlier"
            logger.warning("warm: trial %s runs in a worker process that started before the prestart (pid %d, %.1f s "
                           "before tune.run): not one of the prestarted processes", name, pid, since - started)
        else:
            self.processes[pid] = "tune"
            logger.warning("warm: trial %s runs in a worker process Tune started (pid %d, %.1f s after tune.run): no "
                           "prestarted process took it", name, pid, started - since)

    def summary(self) -> dict:
        """``{"asked", "prestarted", "earlier", "tune", "unknown"}``: the worker processes that took trials, by who
        started them."""
        kinds = list(self.processes.values())
        return {"asked": self.asked, **{k: kinds.count(k) for k in ("prestarted", "earlier", "tune", "unknown")}}


def _this_node(ip: str | None) -> bool:
    if not ip:
        return True
    try:
        import ray

        return not ray.is_initialized() or ip == ray.util.get_node_ip_address()
    except Exception:
        return True


__all__ = ["PrestartCheck", "TESTED_RAY", "init_options", "prestart_trial_workers", "process_started_at",
           "ray_version_tested", "trainable_modules", "tune_actor_env"]
