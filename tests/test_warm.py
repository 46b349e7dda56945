"""ray_llm_search.warm: trial worker processes started, and their imports done, before tune.run needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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
    monkeypatch.setattr(warm, "_ASKED_AT", [])
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
    before = time.time()
    assert warm.prestart_trial_workers(2, keep_alive_s=30) == 2
    assert calls == [(2, 30, 10.0)]
    assert before <= warm.PrestartCheck(2).asked_at <= time.time()  # the check counts from that request

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
    # PrestartCheck saw it too: the first run's process was the prestarted one (the second run asked for none, so
    # its check has nothing to check)
    assert first["check"] == {"asked": 1, "prestarted": 1, "earlier": 0, "tune": 0, "unknown": 0}
    assert second["check"] == {"asked": 0, "prestarted": 0, "earlier": 0, "tune": 0, "unknown": 0}


def test_warm_is_off_by_default_in_the_library_and_on_in_the_quickstart():
    """Experimental: the comparison starts Ray as Ray documents unless --warm asks; the quickstart turns it on
    (--no-warm turns it off)."""
    import importlib.util

    from ray_llm_search import compare

    args = compare.parse_args([])
    assert args.warm is False
    assert compare.ray_init_options(args) == {}
    assert "_system_config" in compare.ray_init_options(compare.parse_args(["--warm"]))
    spec = importlib.util.spec_from_file_location(
        "quickstart_for_test", os.path.join(os.path.dirname(SCRIPTS), os.pardir, "examples", "quickstart.py"))
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert quickstart.parse_args([]).warm is True
    assert quickstart.parse_args(["--no-warm"]).warm is False
    assert "experimental" in warm.__doc__.lower()


def test_every_fallback_is_a_warning(monkeypatch, caplog):
    import ray

    caplog.set_level("WARNING", logger=warm.__name__)
    monkeypatch.setattr(warm, "_prestart", lambda *a: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert warm.prestart_trial_workers(1) == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "no Ray session" in caplog.text

    def refused(*args):
        raise RuntimeError("no such call")

    caplog.clear()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"runtime_env": {}})())
    monkeypatch.setattr(warm, "_prestart", refused)
    assert warm.prestart_trial_workers(1) == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "no such call" in caplog.text


def test_a_ray_it_was_not_tested_on_gets_nothing_and_a_warning(monkeypatch, caplog):
    import ray

    assert warm.ray_version_tested(ray.__version__)  # the Ray this suite runs on is one it was tested on
    caplog.set_level("WARNING", logger=warm.__name__)
    assert warm.ray_version_tested(warm.TESTED_RAY[0] + ".3")
    assert not caplog.records
    monkeypatch.setattr(ray, "__version__", "9.1.0")
    calls = []
    monkeypatch.setattr(warm, "_prestart", lambda *a: calls.append(a))
    assert warm.init_options("a.b") == {}
    assert warm.prestart_trial_workers(2) == 0 and calls == []
    assert len(caplog.records) == 2 and all(r.levelname == "WARNING" and "9.1.0" in r.getMessage()
                                            for r in caplog.records)


def test_the_check_says_whether_a_prestarted_process_took_the_trial(monkeypatch, caplog):
    """A process that started between the prestart and tune.run (setup) is a prestarted one, one that started
    before the prestart an older one, one that started after tune.run Tune's; logged either way, once per
    process, and counted."""
    caplog.set_level("INFO", logger=warm.__name__)
    trial = type("Trial", (), {"trial_id": "t1"})()
    check = warm.PrestartCheck(1, asked_at=0.0)
    check.setup()
    started = warm.process_started_at(os.getpid())
    assert started is not None and started < check.since  # this process started before the "run" did
    check.on_trial_result(trial=trial, result={"pid": os.getpid()})
    check.on_trial_result(trial=trial, result={"pid": os.getpid()})  # the same process: checked once
    assert [r.levelname for r in caplog.records] == ["INFO"] and "prestarted" in caplog.text
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        check.since = time.time() - 60  # as if tune.run began before this process did
        deadline = time.time() + 10
        while warm.process_started_at(late.pid) is None and time.time() < deadline:
            time.sleep(0.05)
        caplog.clear()
        check.on_trial_result(trial=trial, result={"pid": late.pid})
    finally:
        late.kill()
        late.wait()
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "Tune started" in caplog.text
    assert check.summary() == {"asked": 1, "prestarted": 1, "earlier": 0, "tune": 1, "unknown": 0}
    caplog.clear()
    older = warm.PrestartCheck(1, asked_at=time.time())  # this process started before that prestart
    older.setup()
    older.on_trial_result(trial=trial, result={"pid": os.getpid()})
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "before the prestart" in caplog.text
    assert older.summary()["earlier"] == 1
    caplog.clear()
    nothing = warm.PrestartCheck(0)  # nothing was prestarted: nothing to check
    nothing.setup()
    nothing.on_trial_result(trial=trial, result={"pid": os.getpid()})
    assert not caplog.records and nothing.summary()["prestarted"] == 0


def test_process_start_times_agree_with_psutil_and_with_the_clock():
    """The /proc reading agrees with psutil's (which rounds the boot time to a second) and puts a process
    started now within a few ticks of now."""
    import importlib.util

    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs /proc")
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = warm.process_started_at(child.pid)
        assert before - 0.05 <= started <= time.time() + 0.05
        if importlib.util.find_spec("psutil") is not None:
            import psutil

            assert started == pytest.approx(psutil.Process(child.pid).create_time(), abs=1.5)
    finally:
        child.kill()
        child.wait()
    assert warm.process_started_at(2**22 + 12345) is None
