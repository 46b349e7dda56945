"""A real OpenAI-compatible server: llama.cpp's (``llama-cpp-python[server]``) serving the SmolLM2 GGUF on
127.0.0.1, driven through ``OpenAIChat`` by a real ``LLMSearch`` inside a real ``tune.run``.

The trainable only reports the contract keys (the gradient side is covered by test_end_to_end.py); what this
proves is the mentor side end to end over HTTP: the meta-prompt goes to the server, its reply comes back,
is parsed into candidates, and the next generation starts from them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from ray_llm_search import LLMSearch, OpenAIChat  # noqa: E402
from ray_llm_search.llm import smollm2_gguf  # noqa: E402

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120
TASK = "Classify a BBC news article into business, entertainment, politics, sport or technology."
SEEDS = ["the topic of this news article is", "news category:"]
# SmolLM2-135M behind the chat endpoint, 3 rounds each on the same trajectories: the completion style (an
# OPRO-style scored list ending on "prompt:") gave 4 candidates in 2 of 3 replies, the chat style (a numbered
# list) 1 in 3, the rest rejected as too long or chatter; the completion meta-prompt is also 3x shorter.
STYLE = "completion"


# The server with weight repacking off (llama.cpp's "extra buffer types"): on a 2-core AMX machine the server
# passed the /models check, then died of SIGILL at the first completion (ggml's AMX kernels on repacked weights;
# ray_llm_search.llm.no_repack). This fixture starts the server itself, so it starts it through that launcher.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/models", timeout=5) as r:
        return json.loads(r.read().decode())


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        pytest.fail(f"llama-cpp-python[server] is part of the test extra (pip install -e '.[test]'): {e}")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "ray_llm_search.llm.no_repack", "--model", smollm2_gguf(), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--seed", "0",
           # One thread: on a busy machine OpenMP threads spin against each other (2 threads gave 0.7 token/s
           # under load, 1 thread 13 to 17 token/s).
           "--n_threads", "1", "--n_threads_batch", "1"]
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _models(base_url).get("data"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not answering after {START_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base_url": base_url, "model": "smollm2", "start_s": time.monotonic() - started, "proc": proc,
               "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_search_mentored_by_llama_cpp_server(llama_server, ray_session, tmp_path):
    def contract_trainable(config):  # defined here so that Ray pickles it by value (workers cannot import tests)
        text = config["prompt_init"]
        base = (sum(map(ord, text)) % 50) / 100
        for step in range(3):
            tune.report({"val_acc": base + 0.1 * step, "loss": 1.0 / (step + 1), "prompt_text": f"{text} {step}",
                         "step": step})

    started = time.monotonic()
    llm = OpenAIChat(llama_server["model"], base_url=llama_server["base_url"], api_key_env=None, style=STYLE,
                     temperature=0.8, max_tokens=96, timeout_s=120, retries=1)
    search = LLMSearch(llm, TASK, SEEDS, metric="val_acc", mode="max", population=3, generations=2, elites=1,
                       max_prompt_words=12, log_dir=str(tmp_path / "search"), llm_timeout_s=300)
    analysis = tune.run(contract_trainable, config={}, search_alg=search, num_samples=search.total_trials,
                        storage_path=str(tmp_path), name="llama", resources_per_trial={"cpu": 1}, verbose=0)
    assert len(analysis.trials) == search.total_trials == 6
    assert [r["generation"] for r in search.records] == [0, 1]
    # The round was answered by the server: one call, no fault, token counts from the server's usage.
    assert llm.usage["calls"] >= 1
    server = llama_server["proc"]
    assert not llm.faults, (f"faults {dict(llm.faults)}; server "
                            f"{'running' if server.poll() is None else f'exited with {server.returncode}'}; its log:\n"
                            f"{llama_server['log'].read_text(errors='replace')[-3000:]}")
    assert llm.usage["prompt_tokens"] > 0 and llm.usage["completion_tokens"] > 0
    round1 = search.records[1]["llm"]
    assert round1["status"] == "done" and round1["error"] is None, round1
    assert round1["replies"] and round1["replies"][0].strip()
    parsed = len(round1["candidates"]) + sum(round1["rejected"].values())
    assert parsed >= 1, round1
    # Generation 1 is the elite plus the server's candidates, topped up from the pool if it gave too few.
    gen1 = [t for t in search.trajectories if t.generation == 1]
    assert len(gen1) == 3
    assert {t.prompt_init for t in gen1 if t.origin == "llm"} == set(round1["candidates"])
    print(f"\nserver start {llama_server['start_s']:.1f}s, search {time.monotonic() - started:.1f}s, "
          f"LLM round {round1['seconds']}s, usage {dict(llm.usage)}; candidates {round1['candidates']}; "
          f"rejected {round1['rejected']}")


# -- the library's own launcher: LlamaServer / LlamaCppChat (what --llm llama-cpp runs) ---------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_llama_cpp_chat_starts_serves_and_stops_its_server(tmp_path):
    from ray_llm_search.llm import LlamaCppChat, make_llm

    llm = make_llm("llama-cpp", smollm2_gguf(), seed=3, load=False, max_tokens=24)
    assert isinstance(llm, LlamaCppChat) and llm.server is None  # nothing started before load()
    llm.load()
    server = llm.server
    pid = server.proc.pid
    assert llm.base_url == server.base_url and server.alias in server.models()
    assert server.command()[server.command().index("--n_threads") + 1] == "1"
    # the environment that keeps its OpenMP threads from spinning against the trials'
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    assert env[b"OMP_WAIT_POLICY"] == b"PASSIVE"
    replies = llm.propose("Write one short prompt for classifying news articles by topic.\nprompt:", n=1)
    assert len(replies) == 1 and replies[0].strip() and llm.usage["completion_tokens"] > 0 and not llm.faults
    # a second client of the same file in this process shares the server
    other = make_llm("llama-cpp", smollm2_gguf(), seed=4, load=True, max_tokens=8)
    assert other.server is server
    llm.close()
    assert not _alive(pid) and server.proc is None
    # a request after close starts it again (as after a restore: the process does not travel)
    assert other.propose("prompt:", n=1) and other.server.proc is not None and other.server.proc.pid != pid
    other.close()


def test_a_killed_driver_leaves_no_server_behind(tmp_path):
    """The driver is killed (no atexit runs): the kernel ends its server (PR_SET_PDEATHSIG)."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys, time\n"
        "from ray_llm_search.llm import LlamaServer, smollm2_gguf\n"
        "s = LlamaServer(smollm2_gguf()).start()\n"
        "print(s.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(driver.stdout.readline())
        assert _alive(pid)
    finally:
        driver.kill()
        driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the server outlived its killed driver"


def test_a_server_that_cannot_start_says_why(tmp_path):
    from ray_llm_search.llm import LlamaServer, LLMError

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF not really a model")
    with pytest.raises(LLMError, match="server exited"):
        LlamaServer(str(bad), start_timeout_s=60).start()
    with pytest.raises(FileNotFoundError):
        LlamaServer(str(tmp_path / "missing.gguf"))


def test_the_stronger_offline_mentor_answers_on_task(tmp_path):
    """The real Qwen2.5-Coder-1.5B (joined from its parts, which the test command installs) behind llama.cpp's
    server, asked through OpenAIChat with the chat meta-prompt a search builds: it replies with parseable
    prompts (sampled at 0.8; 2 of 3 seeds are enough, a reply may be chatter)."""
    from ray_llm_search.llm import LlamaCppChat
    from ray_llm_search.mentor import Mentor
    from ray_llm_search.pool import Evaluation

    mentor = Mentor("Classify the sentiment of a movie review as positive or negative. The prompt is placed before "
                    "the review.", "val_acc", max_words=12)
    meta = mentor.build_scored([Evaluation(0, "the reviewer thinks the film is", 0.67, 0.56),
                                Evaluation(0, "this movie review is", 0.74, 0.53)], n=5, style="chat")
    llm = LlamaCppChat(seed=0, max_tokens=160)
    try:
        parsed = [mentor.parse(llm.propose(meta, 5), 5).candidates for _ in range(3)]
    finally:
        llm.close()
    assert sum(len(c) >= 2 for c in parsed) >= 2, parsed
    assert llm.usage["calls"] == 3 and not llm.faults
