"""CachedLLM: a rerun of the same search replays the LLM's answers from disk at zero cost; a switch bypasses
it; failures are not cached; no key or credential reaches the file. Against the fake OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
from rls_helpers import FakeOpenAI, Reply, completion, error, score  # noqa: E402

from ray_llm_search import CachedLLM, LLMError, LLMSearch, OpenAIChat  # noqa: E402
from ray_llm_search.llm.cache import NO_CACHE_ENV  # noqa: E402

KEY_ENV = "RLS_CACHE_TEST_KEY"
SECRET = "sk-cache-test-9f8e7d6c5b4a"


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.delenv(NO_CACHE_ENV, raising=False)


def chat(server) -> OpenAIChat:
    return OpenAIChat("test-model", base_url=server.base_url, api_key_env=KEY_ENV, retries=0, timeout_s=10)


def answers(*texts: str) -> list[Reply]:
    return [Reply(body=completion(t)) for t in texts]


def drive(search: LLMSearch) -> list[tuple]:
    """The search without Tune: each phase reports its start's score at step 0 and 1 (no model)."""
    seen, count = [], 0
    while True:
        config = search.suggest(f"t{count}")
        if config == "FINISHED":
            return seen
        if config is None:  # the LLM round is in its background thread
            time.sleep(0.005)
            continue
        trial = f"t{count}"
        count += 1
        for step in (0, 1):
            result = {"val_acc": score(config["prompt_init"]), "loss": 1.0, "step": step,
                      "prompt_text": config["prompt_init"]}
            search.on_trial_result(trial, result)
        search.on_trial_complete(trial, result)
        seen.append((config["generation"], config["origin"], config["prompt_init"]))


def make_search(llm, log_dir) -> LLMSearch:
    return LLMSearch(llm, "Classify news by topic.", ["the topic is", "news about"], metric="val_acc", mode="max",
                     population=3, generations=3, elites=1, log_dir=str(log_dir), seed=1)


def test_a_rerun_replays_every_answer_without_a_request_and_yields_the_same_search(server, tmp_path):
    path = tmp_path / "cache" / "answers.jsonl"
    server.script = answers("1. world news topic\n2. sports or business", "1. what is this article about\n2. tech")
    first = CachedLLM(chat(server), str(path))
    run1 = drive(make_search(first, tmp_path / "a"))
    assert len(server.requests) == 2 and first.usage["cache_misses"] == 2 and first.usage["cache_hits"] == 0
    second = CachedLLM(chat(server), str(path))  # a new process would start like this
    search = make_search(second, tmp_path / "b")
    run2 = drive(search)
    assert len(server.requests) == 2  # nothing asked again
    assert second.usage["cache_hits"] == 2 and second.usage["calls"] == 0 and second.usage["prompt_tokens"] == 0
    assert run2 == run1
    assert [r["llm"]["candidates"] for r in search.records[1:]] == [
        ["world news topic", "sports or business"], ["what is this article about", "tech"]]


def test_the_same_question_asked_twice_gets_both_answers_back_in_order(server, tmp_path):
    server.script = answers("1. first answer", "1. second answer")
    path = str(tmp_path / "answers.jsonl")
    llm = CachedLLM(chat(server), path)
    assert [llm.propose("same question", 2), llm.propose("same question", 2)] == [["1. first answer"], ["1. second answer"]]
    again = CachedLLM(chat(server), path)
    assert [again.propose("same question", 2), again.propose("same question", 2)] == [["1. first answer"],
                                                                                    ["1. second answer"]]
    assert len(server.requests) == 2
    # another n, model setting or question is another key
    server.script = answers("1. other n", "1. other temperature")
    assert again.propose("same question", 3) == ["1. other n"]
    hotter = OpenAIChat("test-model", base_url=server.base_url, api_key_env=KEY_ENV, retries=0, temperature=0.2)
    assert CachedLLM(hotter, path).propose("same question", 2) == ["1. other temperature"]


def test_the_switch_and_the_environment_bypass_the_cache(server, tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    server.script = answers("1. a", "1. b", "1. c")
    assert CachedLLM(chat(server), str(path), enabled=False).propose("q", 1) == ["1. a"]
    assert not path.exists()
    monkeypatch.setenv(NO_CACHE_ENV, "1")
    llm = CachedLLM(chat(server), str(path))
    assert llm.propose("q", 1) == ["1. b"] and not path.exists()
    monkeypatch.delenv(NO_CACHE_ENV)
    assert llm.propose("q", 1) == ["1. c"] and path.exists()
    assert len(server.requests) == 3


def test_a_failed_ask_is_not_cached(server, tmp_path):
    server.script = [Reply(500, error("overloaded")), Reply(body=completion("1. fine now"))]
    llm = CachedLLM(chat(server), str(tmp_path / "answers.jsonl"))
    with pytest.raises(LLMError):
        llm.propose("q", 1)
    assert llm.propose("q", 1) == ["1. fine now"]  # asked again, not a cached failure
    assert llm.faults["server_error"] == 1 and len(server.requests) == 2


def test_the_cache_file_holds_no_key_no_credentials_and_no_prompt_text(server, tmp_path):
    path = tmp_path / "answers.jsonl"
    server.script = answers("1. a prompt")
    plain = CachedLLM(chat(server), str(path))
    plain.propose("a meta-prompt that should not be copied", 1)
    text = path.read_text()
    assert SECRET not in text and "meta-prompt that should" not in text
    entry = json.loads(text.splitlines()[0])
    assert set(entry) == {"key", "replies", "model", "n", "written"}
    # a base URL with user:password@ gives the same key as without: credentials are not key material
    with_credentials = OpenAIChat("test-model", base_url=server.base_url.replace("://", "://user:pw@"),
                                  api_key_env=KEY_ENV)
    assert CachedLLM(with_credentials, str(path)).key("q", 1) == plain.key("q", 1)
    # pickled with the searcher (Tune does): no secret, and it still works after
    restored = pickle.loads(pickle.dumps(plain))
    assert SECRET.encode() not in pickle.dumps(plain)
    server.script = answers("1. after the restore")
    assert restored.propose("another question", 1) == ["1. after the restore"]
    assert restored.usage is restored.llm.usage and restored.usage["cache_misses"] == 2
    assert len(server.requests) == 2


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="CachedLLM wraps an LLM"):
        CachedLLM("gpt-4o-mini", str(tmp_path / "x.jsonl"))
    with pytest.raises(ValueError, match="path must be a file path"):
        CachedLLM(OpenAIChat("m", api_key_env=None), "")


def test_a_bfloat16_local_model_gets_its_own_answers_and_float32_keeps_the_old_keys(tmp_path, monkeypatch):
    """A cache written by a float32 mentor is not replayed for a bfloat16 one (its answers differ), and float32
    keys are those of caches written before the dtype option (no ``dtype`` in them)."""
    from ray_llm_search import LocalLLM
    from ray_llm_search.llm import local

    assert LocalLLM("local-model", dtype="bfloat16").numerics() == {"dtype": "bfloat16", "attention": "eager"}
    assert LocalLLM("local-model", dtype="float32").numerics() == {}

    def key(llm):
        return CachedLLM(llm, str(tmp_path / "c.jsonl")).key("prompt:", 4)

    old = LocalLLM("local-model")
    del old.dtype  # as pickled before the option: float32
    assert old.resolved_dtype() == "float32"
    f32 = LocalLLM("local-model", dtype="float32")
    bf16 = LocalLLM("local-model", dtype="bfloat16")
    assert key(f32) == key(old) != key(bf16)
    # an LLM pickled while the class had its own decoding loop (a ``decode`` attribute) samples with generate
    # now: its keys are generate's, in either precision
    pickled = LocalLLM("local-model", dtype="bfloat16")
    pickled.decode = "loop"
    assert key(pickled) == key(bf16)
    monkeypatch.setattr(local, "_native_dtype", lambda device: "bfloat16")
    assert key(LocalLLM("local-model", dtype="auto")) == key(bf16)
    monkeypatch.setattr(local, "_native_dtype", lambda device: "float32")
    assert key(LocalLLM("local-model", dtype="auto")) == key(f32)
