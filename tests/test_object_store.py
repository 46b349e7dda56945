"""Prompt vectors through Tune's storage on a real S3-compatible object store (moto's server on loopback).

- ``save_vectors`` / ``load_vectors`` on ``s3://`` URIs: the same tensors and head back, the URI's query
  (endpoint, scheme, region) kept, clear errors for a missing or foreign object.
- A real ``tune.run`` with ``LLMSearch`` and ``storage_path="s3://..."`` (one local Ray): every phase's vectors
  go to its trial's folder in the bucket, none to the driver's ``log_dir``; every elite of generations 1+
  resumes from its parent's exact vectors and head (its start score is its parent's best, with nothing
  reused: ``reuse_start_score`` is off), no phase logs "cannot resume", and ``best.json`` names an ``s3://``
  object the driver loads.

The two-node version (no folder shared between the nodes) is in ``tests/test_cluster_storage.py``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

pytest.importorskip("moto")
ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
sys.path.insert(0, SCRIPTS)
import storage_phase  # noqa: E402

from trainables.phase import filesystem_uri, join_location, load_vectors, save_vectors  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with storage_phase.s3_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


def test_join_location_keeps_the_query_of_a_uri():
    assert join_location("s3://b/p?endpoint_override=h:1&scheme=http", "t.pt") == \
        "s3://b/p/t.pt?endpoint_override=h:1&scheme=http"
    assert join_location("s3://b/p/", "t.pt") == "s3://b/p/t.pt"
    assert join_location("/tmp/v", "t.pt") == "/tmp/v/t.pt"


def test_vector_location_moves_a_local_vector_dir_to_remote_tune_storage_only(monkeypatch):
    from trainables import phase

    remote = "s3://b/exp/trial?endpoint_override=h:1"
    monkeypatch.setattr(phase, "_tune_storage_folder", lambda: remote)
    assert phase.vector_location("/driver/log/vectors", in_tune=True) == "s3://b/exp/trial/vectors?endpoint_override=h:1"
    assert phase.vector_location("/driver/log/vectors", in_tune=False) == "/driver/log/vectors"  # outside Tune
    assert phase.vector_location("gs://mine/vectors", in_tune=True) == "gs://mine/vectors"  # a URI is kept
    assert phase.vector_location(None, in_tune=True) is None  # no vector_dir: nothing saved, as before
    monkeypatch.setattr(phase, "_tune_storage_folder", lambda: None)  # Tune's storage is a local path
    assert phase.vector_location("/driver/log/vectors", in_tune=True) == "/driver/log/vectors"


def test_vectors_round_trip_through_s3(s3):
    prompt, head = torch.randn(8, 384), {"head": torch.randn(384, 5)}
    uri = join_location(s3.uri("unit/vectors"), "t1.pt")
    save_vectors(uri, prompt, head, {"model": "m"}, text="a prompt", val_acc=0.5, loss=1.25)
    assert "rls-test/unit/vectors/t1.pt" in s3.keys("unit")
    saved = load_vectors(uri, {"model": "m"})
    assert torch.equal(saved["prompt"], prompt) and torch.equal(saved["extra"]["head"], head["head"])
    assert (saved["text"], saved["val_acc"], saved["loss"]) == ("a prompt", 0.5, 1.25)
    with pytest.raises(ValueError, match="made for another model"):
        load_vectors(uri, {"model": "other"})
    with pytest.raises(ValueError, match="not found"):
        load_vectors(join_location(s3.uri("unit/vectors"), "missing.pt"), {"model": "m"})
    fs, path = s3.filesystem(), "rls-test/unit/foreign.pt"
    with fs.open_output_stream(path) as f:
        f.write(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_vectors(join_location(s3.uri("unit"), "foreign.pt"), {"model": "m"})


def test_filesystem_uri_opens_the_same_object_again(s3):
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(s3.uri("again"))
    uri = filesystem_uri(fs, path + "/x.pt")
    assert uri.startswith("s3://rls-test/again/x.pt?") and "endpoint_override=" in uri and "secret" not in uri
    save_vectors(uri, torch.ones(2, 4), {}, {"model": "m"})
    assert torch.equal(load_vectors(uri, {"model": "m"})["prompt"], torch.ones(2, 4))
    assert filesystem_uri(pyarrow.fs.LocalFileSystem(), "/tmp/x.pt") == "/tmp/x.pt"


def _toy_search(log_dir, storage_path: str, name: str, generations: int, steps: int, env: dict | None = None):
    """A real ``tune.run`` of ``storage_phase.toy_phase`` under ``LLMSearch`` (2 phases a generation, 1 elite) in a
    Ray of its own; returns the search, Tune's analysis and every result reported, by trial."""
    from ray import tune

    from ray_llm_search import LLMSearch
    from ray_llm_search.testing import ScriptedLLM

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (SCRIPTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, **(env or {})}})
    try:
        search = LLMSearch(ScriptedLLM(words="a new start"), "Toy task.", ["seed one", "seed two"], metric="val_acc",
                           mode="max", population=2, generations=generations, elites=1, log_dir=str(log_dir))
        results: dict[str, list] = {}

        class Keep(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                results.setdefault(trial.trial_id, []).append(dict(result))

        analysis = tune.run(storage_phase.toy_phase, name=name, storage_path=storage_path,
                            config={"steps": steps, "eval_every": 2}, search_alg=search,
                            num_samples=search.total_trials, resources_per_trial={"cpu": 1}, callbacks=[Keep()],
                            raise_on_failed_trial=False, verbose=0)
    finally:
        ray.shutdown()
    return search, analysis, results


@pytest.mark.slow
def test_search_on_object_storage_resumes_every_elite_from_its_exact_vectors(s3, tmp_path):
    log_dir = tmp_path / "driver_log"
    search, analysis, results = _toy_search(log_dir, s3.uri("results"), "s3_search", generations=3, steps=6,
                                            env=storage_phase.CREDENTIALS)
    errors = [t.error_file for t in analysis.trials if t.status == "ERROR"]
    assert not errors, [open(e).read()[-2000:] for e in errors if e and os.path.exists(e)]
    assert len(search.records) == 3 and len(analysis.trials) == 6
    for t in search.trajectories:
        assert t.vectors_path.startswith("s3://rls-test/results/s3_search/"), t.vectors_path
        key = t.vectors_path.split("?")[0][len("s3://"):]
        assert key in s3.keys("results/s3_search"), key
    storage_phase.check_exact_resumes(storage_phase.trajectories(search), results, elites_expected=2)
    # nothing of the vectors on the driver's disk: its log_dir holds the search's records only
    assert not (log_dir / "vectors").exists()
    with open(log_dir / "best.json") as f:
        best = json.load(f)
    assert best["vectors_path"].startswith("s3://")
    saved = load_vectors(best["vectors_path"], storage_phase.ToyHeadModel().identity())
    assert saved["prompt"].shape == (2, 4) and saved["extra"]["head"].shape == (4,)


@pytest.mark.slow
def test_with_a_local_storage_path_the_vectors_stay_in_log_dir(tmp_path):
    """One machine, as before this change: Tune's storage is a local path, so the phases keep their vectors in
    the searcher's ``<log_dir>/vectors`` and the elites resume from those files, exactly."""
    log_dir = tmp_path / "log"
    search, analysis, results = _toy_search(log_dir, str(tmp_path / "storage"), "local", generations=2, steps=4)
    assert all(t.status == "TERMINATED" for t in analysis.trials)
    for t in search.trajectories:
        assert t.vectors_path == str(log_dir / "vectors" / f"{t.trial_id}.pt") and os.path.isfile(t.vectors_path)
    pairs = storage_phase.elites_and_parents(storage_phase.trajectories(search))
    assert len(pairs) == 1
    for elite, parent in pairs:
        start = next(r for r in results[elite["trial_id"]] if r["step"] == 0 and not r.get("screen"))
        assert (start["val_acc"], start["loss"]) == storage_phase.phase_best(parent)


@pytest.mark.slow
def test_tuner_restore_from_object_storage_after_the_driver_is_killed(s3, tmp_path):
    """``tests/test_resume.py``'s ``Tuner`` case with ``storage_path`` on the object store: the driver is SIGKILLed
    in generation 1 and the experiment restored from its ``s3://`` folder (``Tuner.restore``): every generation
    recorded once, the LLM asked once per round (the killed driver's answer replayed from the journal), every
    trial terminated, best.json written."""
    import signal
    import subprocess
    import time

    import rls_helpers as helpers
    from ray import tune

    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (SCRIPTS, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, **storage_phase.CREDENTIALS}})
    try:
        address = ray.get_runtime_context().gcs_address
        log_dir, calls = tmp_path / "log", tmp_path / "llm_calls.jsonl"
        storage = s3.uri("results")
        with open(tmp_path / "driver.err", "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, os.path.join(SCRIPTS, "resume_driver.py"), "--address", address, "--api", "tuner",
                 "--storage", storage, "--name", "resume_s3", "--log-dir", str(log_dir), "--calls", str(calls)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "3600"})
            try:
                deadline = time.monotonic() + 300
                while not (helpers.generation_records(log_dir) and helpers.llm_calls(str(calls))):
                    assert proc.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
                    assert time.monotonic() < deadline, "generation 0 never completed"
                    time.sleep(0.05)
                time.sleep(0.5)  # generation 1's phases are running now
                assert proc.poll() is None, "the driver finished before it could be killed mid-run"
            finally:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole process group: this test started it
                proc.wait(timeout=30)
        assert len(helpers.generation_records(log_dir)) < 3
        tuner = tune.Tuner.restore(s3.uri("results/resume_s3"), trainable=helpers.trivial_phase, resume_errored=True)
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert not results.errors and len(results) == 6 and results.num_terminated == 6
    assert [r["generation"] for r in helpers.generation_records(log_dir)] == [0, 1, 2]
    llm_calls = helpers.llm_calls(str(calls))
    assert len(llm_calls) == 2 and llm_calls[0]["pid"] == proc.pid and llm_calls[1]["pid"] == os.getpid()
    assert os.path.isfile(log_dir / "best.json")
    assert any("/resume_s3/" in k and "/checkpoint_" in k for k in s3.keys("results/resume_s3"))
