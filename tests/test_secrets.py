"""Secrets: a real run with a sentinel API key leaves it in no file the run wrote.

The key is exported before Ray starts (as a user would), so every Ray process has it in its environment;
``OpenAIChat`` reads it from there and sends it to a local fake OpenAI-compatible server (which checks that it
arrived). Then every file under the storage path, the searcher's log_dir and this Ray session's folder (logs,
driver artifacts) is searched for the key, raw and in UTF-16 and base64. A canary value put in the trial
config on purpose is the positive control: the same search must find it in the results, the trial params
and the experiment state (and the key's variable name in tuner.pkl, which pickles the ``OpenAIChat``), so a
key that leaked the way a config value does would be found.
"""

from __future__ import annotations

import base64
import os
import sys

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402

from ray_llm_search import CachedLLM, LLMSearch, OpenAIChat  # noqa: E402

pytestmark = pytest.mark.slow

KEY_ENV = "RLS_SECRETS_TEST_API_KEY"
SENTINEL = "sk-rls-SENTINEL-4c9e1f7a2b6d8e03"
CANARY = "CANARY-config-value-8d2f6a1c"


@pytest.fixture(scope="module")
def ray_with_key():
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, SENTINEL)  # before Ray starts: every Ray process inherits it
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        mp.delenv(name, raising=False)
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (helpers.HERE, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield _session_dir()
    finally:
        ray.shutdown()
        mp.undo()


def _session_dir() -> str | None:
    try:
        return ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:  # a private API; without it the session's logs go unsearched
        return None


def needles(secret: str) -> list[bytes]:
    """The secret as bytes in the encodings a file might hold it in."""
    raw = secret.encode()
    out = [raw, secret.encode("utf-16-le")]
    for pad in range(3):  # base64 of the secret at any offset in a longer string
        encoded = base64.b64encode(b"\0" * pad + raw)
        out.append(encoded[4 * ((pad + 2) // 3) if pad else 0:][:-4])
    return out


def search_files(roots: list[str], secret: str) -> tuple[list[str], int]:
    """Files under ``roots`` that hold ``secret`` (see ``needles``) or are named with it, and how many files were
    searched."""
    patterns = needles(secret)
    hits, searched = [], 0
    for root in roots:
        for folder, dirs, files in os.walk(root):
            # Tune names trial folders after their config values.
            hits += [os.path.join(folder, d) for d in dirs if secret in d]
            for name in files:
                path = os.path.join(folder, name)
                if secret in name:
                    hits.append(path)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                searched += 1
                if any(p in data for p in patterns):
                    hits.append(path)
    return sorted(set(hits)), searched


def test_the_search_finds_a_planted_secret_in_every_encoding(tmp_path):
    raw = SENTINEL.encode()
    (tmp_path / "a.txt").write_bytes(b"x" + raw + b"y")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01" + SENTINEL.encode("utf-16-le"))
    for pad in range(3):
        (tmp_path / f"c{pad}.b64").write_bytes(base64.b64encode(b"Bearer "[:pad + 1] + raw + b"!"))
    (tmp_path / "clean.txt").write_bytes(SENTINEL[:-1].encode())
    hits, searched = search_files([str(tmp_path)], SENTINEL)
    assert [os.path.basename(h) for h in hits] == ["a.txt", "b.bin", "c0.b64", "c1.b64", "c2.b64"]
    assert searched == 6


def test_no_file_the_run_wrote_holds_the_api_key(ray_with_key, tmp_path):
    reply = helpers.completion("1. a fresh prompt about the topic\n2. another new prompt for news")
    server = helpers.FakeOpenAI([helpers.Reply(body=reply), helpers.Reply(body=reply)])
    try:
        chat = OpenAIChat("test-model", base_url=server.base_url, api_key_env=KEY_ENV, retries=0, timeout_s=10)
        llm = CachedLLM(chat, str(tmp_path / "cache" / "answers.jsonl"))  # the answer cache is scanned too
        log_dir = tmp_path / "log"
        search = LLMSearch(llm, "Classify news by topic.", ["the topic is", "news about"], metric="val_acc",
                           mode="max", population=2, generations=2, elites=1, log_dir=str(log_dir))
        tuner = tune.Tuner(
            helpers.trivial_phase,
            param_space={"steps": 2, "checkpoint": True, "canary": CANARY},
            tune_config=tune.TuneConfig(search_alg=search, num_samples=search.total_trials),
            run_config=tune.RunConfig(name="secrets", storage_path=str(tmp_path / "storage"), verbose=0),
        )
        results = tuner.fit()
    finally:
        server.close()
    assert not results.errors and len(results) == 4
    # The key was really used: the server got it, and an LLM candidate started a phase.
    assert [r["authorization"] for r in server.requests] == [f"Bearer {SENTINEL}"]
    assert search.records[1]["origins"] == {"elite": 1, "llm": 1}
    assert chat._client is not None  # a live client holding the key existed in the driver
    search.save(str(tmp_path / "explicit-searcher-state.pkl"))

    roots = [str(tmp_path)]
    session = ray_with_key
    if session and os.path.isdir(session):
        roots.append(session)
    # What must be there for the search to mean anything: results, checkpoints, searcher state, tuner.pkl,
    # TensorBoard events (Tune's and the search's), generations.jsonl, best.json, the LLM journal.
    names = [name for root in roots for _, _, files in os.walk(root) for name in files]
    for expected in ("result.json", "params.json", "tuner.pkl", "generations.jsonl", "best.json", "llm_rounds.jsonl",
                     "state.json", "explicit-searcher-state.pkl", "answers.jsonl", "evaluations.csv"):
        assert expected in names, expected
    for prefix in ("searcher-state-", "experiment_state-", "events.out.tfevents."):
        assert any(n.startswith(prefix) for n in names), prefix

    # The positive controls: the canary the config carries is found where configs go, and tuner.pkl holds the
    # pickled OpenAIChat (found by its api_key_env, the variable's name), where a key kept on it would be.
    found, searched = search_files(roots, CANARY)
    found_names = {os.path.basename(h) for h in found}
    assert {"params.json", "params.pkl", "result.json"} <= found_names, found_names
    assert any(n.startswith("experiment_state-") for n in found_names), found_names
    assert searched > 50
    found, _ = search_files(roots, KEY_ENV)
    assert "tuner.pkl" in {os.path.basename(h) for h in found}

    hits, _ = search_files(roots, SENTINEL)
    assert hits == [], f"the API key leaked into {hits}"
