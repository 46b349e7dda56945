"""Submit a search to a Ray cluster with ``ray job submit`` and a runtime environment.

    # the quickstart's search, mentor on the head node, trials on every node:
    python examples/submit_cluster.py --address http://HEAD:8265 -- --storage /mnt/shared/ray_results
    # an OpenAI-compatible mentor; the key travels in the job's environment, never on a command line:
    OPENAI_API_KEY=... python examples/submit_cluster.py --address http://HEAD:8265 --api-key-env OPENAI_API_KEY \\
        -- --llm openai --model gpt-4o-mini --storage s3://bucket/ray_results --log-dir /mnt/shared/llm_search
    # check the cluster's plumbing in seconds: a probe trainable and an instant mentor:
    python examples/submit_cluster.py --address http://HEAD:8265 -- --trainable probe --llm scripted

Everything after ``--`` goes to ``examples/cluster_job.py`` (see its ``--help``). The runtime environment
uploads this checkout as the job's ``working_dir`` (so ``ray_llm_search`` and ``trainables`` import on every
node), can add ``pip`` packages, and sets ``env_vars``: ``--api-key-env NAME`` copies that variable from here
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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_SCRIPT = "examples/cluster_job.py"
# Not uploaded with the working_dir (Ray also skips what .gitignore lists).
EXCLUDES = [".git", ".benchmarks", ".pytest_cache", ".ruff_cache", "**/__pycache__", "*.egg-info", "notes"]


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


def runtime_env(env_names: list[str], pip: list[str]) -> dict:
    """The job's runtime environment; reads the named variables from this process's environment."""
    missing = [n for n in env_names if not os.environ.get(n)]
    if missing:
        raise SystemExit(f"environment variable(s) {', '.join(missing)} not set here; export them before submitting")
    env: dict = {"working_dir": ROOT, "excludes": EXCLUDES}
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
    env = runtime_env(env_names, args.pip)
    shown = {**env, "env_vars": {n: "<hidden>" for n in env_names}} if env_names else env
    print("runtime_env: " + json.dumps(shown), flush=True)
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


if __name__ == "__main__":
    sys.exit(main())
