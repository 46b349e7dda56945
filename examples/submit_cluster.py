"""Submit a search to a Ray cluster with ``ray job submit`` and a runtime environment.

    # the quickstart's search, mentor on the head node, trials on every node:
    python examples/submit_cluster.py --address http://HEAD:8265 -- --storage /mnt/shared/ray_results
    # an OpenAI-compatible mentor; the key travels in the job's environment, never on a command line:
    OPENAI_API_KEY=... python examples/submit_cluster.py --address http://HEAD:8265 --api-key-env OPENAI_API_KEY \\
        -- --llm openai --llm-model gpt-4o-mini --storage s3://bucket/ray_results --log-dir /mnt/shared/llm_search
    # check the cluster's plumbing in seconds: a probe trainable and an instant mentor:
    python examples/submit_cluster.py --address http://HEAD:8265 -- --trainable probe --llm scripted

Everything after ``--`` goes to ``examples/cluster_job.py`` (see its ``--help``). The runtime environment
uploads only what the job needs: ``ray_llm_search`` and ``trainables`` as ``py_modules`` (so they import on every
node) and a ``working_dir`` staged with the job script alone; nothing else of the checkout travels (a
virtualenv, data or results kept in it stay here). It can add ``pip`` packages, and sets ``env_vars``: ``--api-key-env NAME`` copies that variable from here
into the job (and passes ``--api-key-env NAME`` to the job). The runtime environment is written to a file
readable only by you and deleted after submission, and what is printed shows variable names, never values.
But Ray (2.60) keeps the job's runtime environment: the dashboard redacts ``env_vars`` for browsers, yet
``ray job`` CLI, SDK and HTTP users of the cluster can read them, and each node's runtime env agent writes
them in plain text to ``<temp-dir>/session_*/logs/runtime_env_agent.log``. On a shared cluster, set the key
on the nodes instead (e.g. from a secret store into the environment of ``ray start``; the job's driver
inherits it) and pass only its name: ``-- --llm openai --api-key-env NAME``.

Needs ``ray[default]`` here (the job CLI) and a cluster started with its dashboard (``ray start --head
--include-dashboard=true``), whose address ``--address`` (or ``$RAY_ADDRESS``) names.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_SCRIPT = "examples/cluster_job.py"
# What the job needs: the two packages (as py_modules) and the job script (alone in a staged working_dir). The
# rest of the checkout is never uploaded, whatever it holds: a virtualenv, data, results, model caches.
PACKAGES = ("ray_llm_search", "trainables")
# Skipped inside the uploaded packages too (a Python environment or a cache someone put there).
EXCLUDES = ["**/__pycache__", "*.pyc", "*.egg-info", ".venv", "venv", ".env", "env", ".tox", ".nox", ".conda",
            "site-packages"]


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, job_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                   help="the cluster's dashboard address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--api-key-env", default=None,
                   help="copy this environment variable (the LLM's API key) into the job; its value is never printed")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="copy another environment variable into the job (repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                   help="pip-install this into the job's environment on every node (repeatable)")
    p.add_argument("--submission-id", default=None)
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("--timeout-s", type=float, default=None, help="stop the job if it runs longer (with waiting)")
    p.add_argument("--dry-run", action="store_true", help="print the command (values hidden) and exit")
    return p.parse_args(argv), job_args


def stage_job(folder: str) -> str:
    """A working_dir holding only the job script, at the path the entrypoint names."""
    os.makedirs(os.path.join(folder, os.path.dirname(JOB_SCRIPT)), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, JOB_SCRIPT), os.path.join(folder, JOB_SCRIPT))
    return folder


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern.removeprefix("**/")) for pattern in EXCLUDES)


def upload_bytes(env: dict) -> int:
    """Bytes of the files the runtime env uploads (working_dir and py_modules, less what EXCLUDES names)."""
    total = 0
    for top in [env["working_dir"], *env.get("py_modules", [])]:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not _excluded(d)]
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files if not _excluded(f))
    return total


def runtime_env(env_names: list[str], pip: list[str], working_dir: str) -> dict:
    """The job's runtime environment; reads the named variables from this process's environment."""
    missing = [n for n in env_names if not os.environ.get(n)]
    if missing:
        raise SystemExit(f"environment variable(s) {', '.join(missing)} not set here; export them before submitting")
    env: dict = {"working_dir": working_dir, "py_modules": [os.path.join(ROOT, p) for p in PACKAGES],
                 "excludes": EXCLUDES}
    if env_names:
        env["env_vars"] = {n: os.environ[n] for n in env_names}
    if pip:
        env["pip"] = list(pip)
    return env


def ray_cli() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else (shutil.which("ray") or "ray")


def submit_command(address: str, env_file: str, submission_id: str, job_args: list[str], no_wait: bool) -> list[str]:
    cmd = [ray_cli(), "job", "submit", "--address", address, "--submission-id", submission_id,
           "--runtime-env", env_file]
    if no_wait:
        cmd.append("--no-wait")
    return [*cmd, "--", "python", JOB_SCRIPT, *job_args]


def main(argv=None) -> int:
    args, job_args = parse_args(argv)
    env_names = list(dict.fromkeys(([args.api_key_env] if args.api_key_env else []) + args.env))
    if args.api_key_env and "--api-key-env" not in job_args:
        job_args = [*job_args, "--api-key-env", args.api_key_env]
    submission_id = args.submission_id or "llm-search-" + time.strftime("%Y%m%d-%H%M%S")
    staged = tempfile.mkdtemp(prefix="llm_search_job_")
    env = runtime_env(env_names, args.pip, stage_job(staged))
    shown = {**env, "env_vars": {n: "<hidden>" for n in env_names}} if env_names else env
    print("runtime_env: " + json.dumps(shown), flush=True)
    print(f"upload: {upload_bytes(env)} bytes (the job script and the packages {', '.join(PACKAGES)})", flush=True)
    if env_names:
        print(f"note: Ray keeps env_vars ({', '.join(env_names)}) with the job and logs them in each node's "
              "runtime_env_agent.log; on a shared cluster set secrets on the nodes instead", flush=True)

    # A file, not --runtime-env-json: a command line is visible to every user of this machine (ps).
    fd, env_file = tempfile.mkstemp(prefix="runtime_env_", suffix=".yaml")  # created with mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(env, f)  # JSON is YAML
        cmd = submit_command(args.address, env_file, submission_id, job_args, args.no_wait)
        print("+ " + " ".join(cmd), flush=True)
        if args.dry_run:
            return 0
        try:
            return subprocess.run(cmd, timeout=args.timeout_s).returncode
        except subprocess.TimeoutExpired:
            print(f"job {submission_id} ran over {args.timeout_s}s; stopping it", flush=True)
            subprocess.run([ray_cli(), "job", "stop", "--address", args.address, submission_id], timeout=60)
            return 124
    finally:
        os.unlink(env_file)
        shutil.rmtree(staged, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
