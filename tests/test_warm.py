"""ray_llm_search.warm: trial worker processes started, and their imports done, before tune.run needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ray_llm_search import warm

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")


def _in_main():  # a function whose module a worker cannot import
    pass


_in_main.__module__ = "__main__"


def test_modules_and_init_options():
    from trainables.text_prompt import train_text_prompt

    assert warm.trainable_modules(train_text_prompt) == [*warm.TUNE_MODULES, "trainables.text_prompt"]
    # module names as text, duplicates once, a script's own functions left out
    assert warm.trainable_modules("a.b", _in_main, "a.b", train_text_prompt) == [
        *warm.TUNE_MODULES, "a.b", "trainables.text_prompt"]
    options = warm.init_options("a.b")
    assert options == {"_system_config": {"preload_python_modules": [*warm.TUNE_MODULES, "a.b"],
                                          "prestart_worker_first_driver": False}}
    kept = warm.init_options("a.b", prestart_task_workers=True)["_system_config"]
    assert "prestart_worker_first_driver" not in kept


def test_the_runtime_environment_is_the_one_tune_gives_its_actors(monkeypatch):
    """A prestarted process is handed only to an actor with its runtime environment: ours must be Tune's,
    propagated variables included."""
    from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE, _ActorClassCache

    class Trainable:
        pass

    assert warm.tune_actor_env() == _ActorClassCache().get(Trainable)._default_options["runtime_env"]
    name = sorted(ENV_VARS_TO_PROPAGATE)[0]
    monkeypatch.setenv(name, "x")

    class Other:
        pass

    env = warm.tune_actor_env()
    assert env["env_vars"][name] == "x"
    assert env == _ActorClassCache().get(Other)._default_options["runtime_env"]


def test_prestart_asks_nothing_where_it_cannot_help(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(warm, "_prestart", lambda *a: calls.append(a))
    assert warm.prestart_trial_workers(0) == 0
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert warm.prestart_trial_workers(2) == 0  # no Ray session
    assert calls == []

    class Context:
        runtime_env = {"env_vars": {"A": "1"}}

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    assert warm.prestart_trial_workers(2) == 0  # a job environment would change the actors' one
    assert calls == []
    Context.runtime_env = {}
    assert warm.prestart_trial_workers(2, keep_alive_s=30) == 2
    assert calls == [(2, 30, 10.0)]

    def refused(*args):
        raise RuntimeError("no such call")

    monkeypatch.setattr(warm, "_prestart", refused)
    assert warm.prestart_trial_workers(1) == 0  # Tune starts its processes as before


@pytest.mark.slow
def test_the_first_trials_run_in_the_prestarted_process_with_its_imports_done(tmp_path):
    """A real Ray: the prestarted process imports the trainable's module before tune.run is called and both
    trials of the first run run in it; the second run (its actor is new) gets a new process, which imports the
    module only after that run started: what every run paid before."""
    mark = tmp_path / "imports.jsonl"
    env = {**os.environ, "WARM_MARK": str(mark),
           "PYTHONPATH": os.pathsep.join(filter(None, [SCRIPTS, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "warm_driver.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["asked"] == 1
    [prestarted] = out["before"]
    first, second = out["first"], out["second"]
    assert first["pids"] == [prestarted["pid"]]
    assert prestarted["at"] < first["started"]  # imported before tune.run was called
    [fresh] = [m for m in out["after"] if m["pid"] != prestarted["pid"]]
    assert second["pids"] == [fresh["pid"]] and fresh["at"] > second["started"]
