"""A real two-node Ray cluster on loopback, and a search submitted to it with ``ray job submit``.

The head (1 CPU, with its dashboard, which serves the job API) and a second node (1 CPU) are started with
``ray start``; ``examples/submit_cluster.py`` submits ``examples/cluster_job.py`` with a runtime environment
(the checkout as ``working_dir``, an API-key variable in ``env_vars``). The job runs a quickstart-sized
search (population 4, 3 generations) with a probe trainable that records the node it ran on, and an instant
scripted mentor. Both nodes must run trials; the key must reach the job and never be printed.

Teardown stops exactly this cluster's processes (found by its private ``--temp-dir`` and their children),
even when the test fails: ``ray stop --force`` would also kill every other Ray session on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Made at run time, so that this file (uploaded with the working_dir) does not hold it.
SENTINEL = "sk-cluster-" + secrets.token_hex(12)
KEY_ENV = "RLS_CLUSTER_TEST_KEY"
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _ray_cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else "ray"


def _env(token_path: str) -> dict:
    """The environment of every cluster process and CLI call: token auth with this cluster's own token.

    Ray 2.60 turns token auth on for ``ray start --head`` whenever ``~/.ray/auth_token`` exists (a local
    ``ray.init()`` writes one), but not for a joining node, which then fails to reach the GCS; so the mode
    and the token file are set explicitly, the way a real cluster shares its token.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    return env


def _run(cmd: list[str], timeout: float, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _cluster_pids(marker: str) -> set[int]:
    """Processes whose command line names ``marker`` (the cluster's temp dir) and all their descendants."""
    import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is imported

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and proc.pid not in me:
                roots.add(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pids = set()
    for proc in roots:
        pids.add(proc.pid)
        try:
            pids.update(c.pid for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return pids - me


def _stop_cluster(marker: str) -> None:
    """SIGTERM this cluster's processes, then SIGKILL what is left; never touches other Ray sessions."""
    import psutil

    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
        pids = _cluster_pids(marker)
        if not pids:
            return
        procs = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                proc.send_signal(sig)
                procs.append(proc)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=wait_s)


def _http_json(url: str, token: str, timeout: float = 5.0):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _files_containing(root: str, needle: str) -> list[str]:
    hits = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    if needle.encode() in f.read():
                        hits.append(os.path.relpath(path, root))
            except OSError:  # sockets, files removed meanwhile
                continue
    return hits


def _wait(what: str, check, timeout_s: float, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s}s (last error: {last!r})")


@contextlib.contextmanager
def local_cluster():
    """A head and a second node on 127.0.0.1, 1 CPU each; yields the dashboard address and the CLI env."""
    # Short and private: Ray's socket paths must stay under 108 bytes, and the teardown finds processes by it.
    # Each node gets its own temp dir below it: nodes sharing one would share runtime_resources/, and the
    # second node deleting the job's unpacked working_dir when its trials end pulls the driver's cwd away.
    temp_dir = tempfile.mkdtemp(prefix="rlc_", dir="/tmp")
    token, token_path = secrets.token_hex(32), os.path.join(temp_dir, "auth_token")
    with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(token)
    env = _env(token_path)
    (gcs, dashboard, client, head_agent, head_agent_grpc, head_rt_agent, head_metrics,
     node_agent, node_agent_grpc, node_rt_agent, node_metrics) = _free_ports(11)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [_ray_cli(), "start", "--head", f"--port={gcs}", *common, "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={head_agent}", f"--dashboard-agent-grpc-port={head_agent_grpc}",
            f"--runtime-env-agent-port={head_rt_agent}", f"--metrics-export-port={head_metrics}",
            f"--temp-dir={os.path.join(temp_dir, 'head')}"]
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{gcs}", *common,
              f"--dashboard-agent-listen-port={node_agent}", f"--dashboard-agent-grpc-port={node_agent_grpc}",
              f"--runtime-env-agent-port={node_rt_agent}", f"--metrics-export-port={node_metrics}",
              f"--temp-dir={os.path.join(temp_dir, 'node')}"]
    address = f"http://127.0.0.1:{dashboard}"
    started = time.monotonic()
    try:
        out = _run(head, timeout=START_TIMEOUT_S, env=env)
        assert out.returncode == 0, f"ray start --head failed:\n{out.stdout}\n{out.stderr}"
        out = _run(worker, timeout=START_TIMEOUT_S, env=env)
        assert out.returncode == 0, f"ray start (second node) failed:\n{out.stdout}\n{out.stderr}"

        def two_nodes_alive():
            nodes = _http_json(f"{address}/api/v0/nodes?limit=10", token)["data"]["result"]["result"]
            return len([n for n in nodes if n.get("state") == "ALIVE"]) == 2

        _wait("two alive nodes and the job API", lambda: two_nodes_alive() and _http_json(f"{address}/api/version", token),
              START_TIMEOUT_S)
        yield {"address": address, "env": env, "token": token, "temp_dir": temp_dir, "start_s": time.monotonic() - started}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def cluster():
    with local_cluster() as c:
        yield c


@pytest.fixture
def venv_in_checkout():
    """A multi-GB virtualenv inside the checkout, as ``python -m venv .venv`` leaves one (a sparse file: no disk)."""
    folder = os.path.join(ROOT, ".venv-rls-cluster-test")
    site = os.path.join(folder, "lib", "python3.11", "site-packages", "torch", "lib")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "libtorch_cpu.so"), "wb") as f:
        f.truncate(6 * 1024**3)
    with open(os.path.join(folder, "pyvenv.cfg"), "w") as f:
        f.write("home = /usr/bin\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _tree_bytes(top: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(top) for f in files
               if not os.path.islink(os.path.join(d, f)))


def test_submitted_search_runs_trials_on_both_nodes(cluster, tmp_path, venv_in_checkout):
    summary_path = tmp_path / "summary.json"
    storage = tmp_path / "storage"
    submission_id = f"rls-test-{os.getpid()}"
    env = {**cluster["env"], KEY_ENV: SENTINEL}
    started = time.monotonic()
    out = _run([sys.executable, os.path.join(ROOT, "examples", "submit_cluster.py"),
                "--address", cluster["address"], "--api-key-env", KEY_ENV, "--submission-id", submission_id,
                "--timeout-s", str(JOB_TIMEOUT_S), "--",
                "--trainable", "probe", "--llm", "scripted", "--population", "4", "--generations", "3",
                "--sleep-s", "1.0", "--storage", str(storage), "--name", "cluster_test",
                "--summary", str(summary_path)],
               timeout=JOB_TIMEOUT_S + 90, env=env, cwd=str(tmp_path))
    job_s = time.monotonic() - started
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert SENTINEL not in log  # the key went through the runtime env file, never printed or on a command line

    job = _http_json(f"{cluster['address']}/api/jobs/{submission_id}", cluster["token"])
    assert job["status"] == "SUCCEEDED", job.get("message")
    assert job["runtime_env"]["env_vars"][KEY_ENV] == SENTINEL  # it did travel: Ray keeps it with the job

    with open(summary_path) as f:
        summary = json.load(f)
    # Nothing the search wrote (Tune's results, LLMSearch's summaries, vectors, TensorBoard) holds the key.
    assert _files_containing(str(storage), SENTINEL) == []
    # Ray 2.60's runtime env agent logs each runtime env it creates, env_vars included, on every node that
    # starts a worker for the job (docs/cluster.md, "API keys on a cluster", says so); nothing else of Ray's
    # (driver, worker, GCS and dashboard logs) may hold the key.
    ray_hits = _files_containing(cluster["temp_dir"], SENTINEL)
    assert all(os.path.basename(h) == "runtime_env_agent.log" for h in ray_hits), ray_hits
    print(f"files under Ray's own temp dirs that hold the key: {ray_hits}")
    assert summary["trials"] == 12 and summary["errored"] == 0
    assert summary["generations"] == 3 and summary["llm_calls"] == 2
    assert len(summary["cluster_nodes"]) == 2
    # Both nodes ran phases (one machine, so one IP: told apart by Ray's node id).
    assert sorted(summary["trial_nodes"]) == sorted(summary["cluster_nodes"]), summary
    assert summary["api_key_env_set"] is True
    # The job ran from the uploaded working_dir, not from this checkout.
    assert os.path.realpath(summary["job_cwd"]) != os.path.realpath(ROOT)
    assert "runtime_resources" in summary["job_cwd"]
    with open(os.path.join(summary["log_dir"], "generations.jsonl")) as f:
        assert len(f.read().splitlines()) == 3
    print(f"cluster start {cluster['start_s']:.1f}s, job {job_s:.1f}s (search wall {summary['wall_s']}s)")
    # Only the packages and the job script travelled, not the 6 GB virtualenv in the checkout: what the
    # submitter says it uploads, and what the nodes unpacked, are both small.
    said = [line for line in log.splitlines() if line.startswith("upload: ")]
    assert said and int(said[0].split()[1]) < 5 * 1024**2, said
    unpacked = [os.path.join(d, name) for d, dirs, _ in os.walk(cluster["temp_dir"]) for name in dirs
                if name == "runtime_resources"]
    assert unpacked
    total = sum(_tree_bytes(p) for p in unpacked)
    assert total < 20 * 1024**2, f"{total} bytes unpacked under {unpacked}"
    assert not any(".venv-rls-cluster-test" in d for p in unpacked for d, _, _ in os.walk(p))
