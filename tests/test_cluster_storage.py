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

import json
import os
import shutil
import sys
import tempfile

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


@pytest.fixture
def private_cluster(tmp_path):
    """A head (``side0``) and a second node (``side1``) on 127.0.0.1, 2 CPUs each; the second node sees an empty
    tmpfs at ``tmp_path/driver_local``. Yields the GCS address, the env and the driver's local folder."""
    if not _can_unshare():
        pytest.skip("needs unshare --mount (root or user namespaces) to give the second node folders of its own")
    driver_local = tmp_path / "driver_local"
    driver_local.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="rlcs_", dir="/tmp")
    token_path = os.path.join(temp_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    env = {**_env(token_path), **storage_phase.CREDENTIALS}
    (gcs, client, head_agent, head_agent_grpc, head_rt_agent, head_metrics,
     node_agent, node_agent_grpc, node_rt_agent, node_metrics) = _free_ports(10)
    common = ["--num-cpus=2", "--disable-usage-stats"]  # the machine's own IP: ray.init resolves 127.0.0.1 to it
    head = [_ray_cli(), "start", "--head", f"--port={gcs}", *common, "--include-dashboard=false",
            f"--ray-client-server-port={client}", '--resources={"side0": 2}',
            f"--dashboard-agent-listen-port={head_agent}", f"--dashboard-agent-grpc-port={head_agent_grpc}",
            f"--runtime-env-agent-port={head_rt_agent}", f"--metrics-export-port={head_metrics}",
            f"--temp-dir={os.path.join(temp_dir, 'head')}"]
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{gcs}", *common, '--resources={"side1": 2}',
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
