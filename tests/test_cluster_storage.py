"""A two-node loopback cluster with no folder shared between its nodes, and Tune's storage on an S3-compatible
object store (moto's server on loopback): every elite resumes from its exact vectors on the other node.

The second node runs in a mount namespace of its own (``unshare --mount``) with an empty tmpfs over the
driver's local folder, which holds ``LLMSearch``'s ``log_dir``: what the driver's node writes there the second
node cannot see, and the reverse (each trial reports whether it sees a marker file the test put there). Trials
of even generations are placed on the head node and those of odd generations on the second one (custom
resources), so that every elite of generations 1+ runs on the other node than its parent. The toy trainable
raises if its phase logs "cannot resume"; each elite's start must score exactly its parent's best, from an
``s3://`` location in the parent's trial folder.

Teardown stops exactly this cluster's processes (found by its private ``--temp-dir``) and the moto server, by
PID; never ``ray stop --force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("moto")
ray = pytest.importorskip("ray")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")
sys.path.insert(0, SCRIPTS)
import storage_phase  # noqa: E402
from test_cluster import START_TIMEOUT_S, _env, _free_ports, _ray_cli, _run, _stop_cluster  # noqa: E402

pytestmark = pytest.mark.slow
DRIVER_TIMEOUT_S = 300


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = tempfile.mkdtemp(prefix="rls_ns_")
    try:
        out = _run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"mount -t tmpfs tmpfs {probe} && touch {probe}/x"], timeout=30, env=dict(os.environ))
        return out.returncode == 0 and not os.path.exists(os.path.join(probe, "x"))
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@pytest.fixture
def s3(tmp_path):
    with storage_phase.s3_server(str(tmp_path)) as server:
        yield server


@contextlib.contextmanager
def _private_cluster(tmp_path, cpus: int):
    """A head (``side0``) and a second node (``side1``), ``cpus`` CPUs each; the second node sees an empty
    tmpfs at ``tmp_path/driver_local``. Yields the GCS address, the env, the driver's local folder and the
    cluster's temp dir."""
    driver_local = tmp_path / "driver_local"
    driver_local.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="rlcs_", dir="/tmp")
    token_path = os.path.join(temp_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    env = {**_env(token_path), **storage_phase.CREDENTIALS}
    (gcs, client, head_agent, head_agent_grpc, head_rt_agent, head_metrics,
     node_agent, node_agent_grpc, node_rt_agent, node_metrics) = _free_ports(10)
    common = [f"--num-cpus={cpus}", "--disable-usage-stats"]  # the machine's own IP: ray.init resolves 127.0.0.1 to it
    head = [_ray_cli(), "start", "--head", f"--port={gcs}", *common, "--include-dashboard=false",
            f"--ray-client-server-port={client}", f'--resources={{"side0": {cpus}}}',
            f"--dashboard-agent-listen-port={head_agent}", f"--dashboard-agent-grpc-port={head_agent_grpc}",
            f"--runtime-env-agent-port={head_rt_agent}", f"--metrics-export-port={head_metrics}",
            f"--temp-dir={os.path.join(temp_dir, 'head')}"]
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{gcs}", *common, f'--resources={{"side1": {cpus}}}',
              f"--dashboard-agent-listen-port={node_agent}", f"--dashboard-agent-grpc-port={node_agent_grpc}",
              f"--runtime-env-agent-port={node_rt_agent}", f"--metrics-export-port={node_metrics}",
              f"--temp-dir={os.path.join(temp_dir, 'node')}"]
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs tmpfs "{driver_local}" && exec "$@"', "sh", *worker]
    try:
        out = _run(head, timeout=START_TIMEOUT_S, env=env)
        assert out.returncode == 0, f"ray start --head failed:\n{out.stdout}\n{out.stderr}"
        out = _run(private, timeout=START_TIMEOUT_S, env=env)
        assert out.returncode == 0, f"ray start (second node) failed:\n{out.stdout}\n{out.stderr}"
        yield {"address": f"127.0.0.1:{gcs}", "env": env, "driver_local": driver_local, "temp_dir": temp_dir}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def private_cluster(tmp_path):
    if not _can_unshare():
        pytest.skip("needs unshare --mount (root or user namespaces) to give the second node folders of its own")
    with _private_cluster(tmp_path, cpus=2) as cluster:
        yield cluster


def test_elites_resume_exactly_across_nodes_without_a_shared_folder(private_cluster, s3, tmp_path):
    driver_local = private_cluster["driver_local"]
    marker = driver_local / "only_the_driver_node_sees_this"
    marker.write_text("x")
    log_dir, out_path = driver_local / "llm_search", tmp_path / "out.json"
    env = {k: v for k, v in private_cluster["env"].items() if not k.startswith("RAY_ADDRESS")}
    run = _run([sys.executable, os.path.join(SCRIPTS, "storage_driver.py"), "--address", private_cluster["address"],
                "--storage", s3.uri("results"), "--log-dir", str(log_dir), "--marker", str(marker),
                "--out", str(out_path)], timeout=DRIVER_TIMEOUT_S, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    with open(out_path) as f:
        out = json.load(f)
    assert not out["errors"], out["errors"]
    assert out["records"] == 3 and len(out["trials"]) == 6 and set(out["trials"].values()) == {"TERMINATED"}
    assert sorted(out["nodes"].values()) == ["side0", "side1"]
    results, trajectories = out["results"], out["trajectories"]
    last = {tid: rows[-1] for tid, rows in results.items()}
    for t in trajectories:
        row = last[t["trial_id"]]
        # placed as asked, and only the head node sees the driver's folder: the nodes share no local folder
        assert out["nodes"][row["node_id"]] == f"side{t['generation'] % 2}", (t["trial_id"], t["generation"])
        assert row["sees_marker"] is (t["generation"] % 2 == 0), (t["trial_id"], row["sees_marker"])
        assert t["vectors_path"].startswith("s3://rls-test/results/cluster_s3/"), t["vectors_path"]
    storage_phase.check_exact_resumes(trajectories, results, elites_expected=2)
    for elite, parent in storage_phase.elites_and_parents(trajectories):
        assert last[elite["trial_id"]]["node_id"] != last[parent["trial_id"]]["node_id"]
    assert not (log_dir / "vectors").exists()
    with open(log_dir / "best.json") as f:
        assert json.load(f)["vectors_path"].startswith("s3://")
    print(f"search on two nodes with s3 storage: {out['wall_s']}s")


def _raylet_pid(temp_dir: str) -> int:
    """The PID of the raylet whose command line names ``temp_dir`` (one node's own temp dir)."""
    import psutil

    found = [p.pid for p in psutil.process_iter(["name", "cmdline"])
             if "raylet" in (p.info["name"] or "") and temp_dir in " ".join(p.info["cmdline"] or [])]
    assert len(found) == 1, found
    return found[0]


def test_a_node_lost_mid_search_is_retried_on_the_other_from_its_checkpoint(tmp_path, s3):
    """1 CPU a node, so generation 0's two phases run one on each node; once both have reported their start with
    its checkpoint (6 steps of 1 s still to go), the second node's raylet is killed (SIGKILL, by PID). Tune (``max_failures=2``) restarts that trial on the
    head from its last checkpoint in the bucket; every generation completes once, the mentor is asked once per
    round, and best.json is written."""
    if not _can_unshare():
        pytest.skip("needs unshare --mount (root or user namespaces) to give the second node folders of its own")
    with _private_cluster(tmp_path, cpus=1) as cluster:
        driver_local = cluster["driver_local"]
        marker = driver_local / "only_the_driver_node_sees_this"
        marker.write_text("x")
        log_dir, out_path = driver_local / "llm_search", tmp_path / "out.json"
        env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_ADDRESS")}
        raylet = _raylet_pid(os.path.join(cluster["temp_dir"], "node"))
        stdout, stderr = open(tmp_path / "driver.out", "w"), open(tmp_path / "driver.err", "w")
        proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "storage_driver.py"), "--address",
                                 cluster["address"], "--storage", s3.uri("results"), "--log-dir", str(log_dir),
                                 "--marker", str(marker), "--out", str(out_path), "--name", "node_loss",
                                 "--placement", "free", "--max-failures", "2", "--step-sleep-s", "1.0"],
                                env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + DRIVER_TIMEOUT_S
            while True:  # both of generation 0's phases have reported their start (and its checkpoint)
                folders = {k.split("/")[3] for k in s3.keys("results/node_loss") if "/checkpoint_000000/" in k}
                if len(folders) >= 2:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.err").read_text()[-3000:]
                time.sleep(0.2)
            os.kill(raylet, signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait(DRIVER_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            stdout.close()
            stderr.close()
        assert proc.returncode == 0, (tmp_path / "driver.err").read_text()[-4000:]
    with open(out_path) as f:
        out = json.load(f)
    assert out["records"] == 3 and set(out["trials"].values()) == {"TERMINATED"}, out["trials"]
    assert out["llm_calls"] == 2  # one LLM round per generation after the first, none asked twice
    with open(log_dir / "generations.jsonl") as f:
        assert sorted(json.loads(line)["generation"] for line in f) == [0, 1, 2]
    with open(log_dir / "best.json") as f:
        assert json.load(f)["vectors_path"].startswith("s3://")
    lost = [n for n, side in out["nodes"].items() if side == "side1"]
    moved = [rows for rows in out["results"].values() if rows[0]["node_id"] in lost and rows[-1]["node_id"] not in lost]
    assert len(moved) == 1, {t: [(r["step"], out["nodes"].get(r["node_id"])) for r in rows]
                             for t, rows in out["results"].items()}
    rows = moved[0]
    after = [r for r in rows if r["node_id"] not in lost]
    before = [r for r in rows if r["node_id"] in lost]
    # restarted from its last checkpoint, not from scratch: it goes on after the last step it reported there (a
    # restarted phase reports no step 0)
    assert after[0]["step"] > 0 and after[0]["step"] <= before[-1]["step"] + 2, [(r["step"], r["node_id"]) for r in rows]
    assert rows[-1]["step"] == 6
    storage_phase.check_exact_resumes(out["trajectories"], out["results"], elites_expected=2)
    print(f"node lost; search finished {time.monotonic() - killed_at:.1f}s later (wall {out['wall_s']}s)")
