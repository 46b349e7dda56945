"""OpenAIChat against a real local HTTP server that speaks the chat-completions API, scripted per test."""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
from types import SimpleNamespace

import pytest

from ray_llm_search.llm import openai_chat
from ray_llm_search.llm.base import LLMError
from ray_llm_search.llm.openai_chat import OpenAIChat

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
from rls_helpers import JSON, FakeOpenAI, Reply, completion, error  # noqa: E402  (the fake server the fault tests use too)

SENTINEL_KEY = "sk-test-SENTINEL-7f3a9c1e5b"


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(no_proxy):
    fake = FakeOpenAI()
    try:
        yield fake
    finally:
        fake.close()
        assert not fake.thread.is_alive()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Backoff waits the client asked for, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(openai_chat, "time", SimpleNamespace(sleep=waits.append))
    return waits


def make(server: FakeOpenAI, **kwargs) -> OpenAIChat:
    kwargs.setdefault("api_key_env", None)
    kwargs.setdefault("retries", 1)
    kwargs.setdefault("backoff_s", 0.0)
    kwargs.setdefault("timeout_s", 5.0)
    return OpenAIChat("test-model", base_url=server.base_url, **kwargs)


# -- replies --------------------------------------------------------------------------------------------------


def test_normal_reply_returns_text_and_counts_tokens(server, sleeps):
    server.script = [Reply(body=completion("1. first\n2. second", 11, 7)),
                     Reply(body=completion("3. third", 5, 2))]
    llm = make(server, temperature=0.3, max_tokens=99)
    assert llm.propose("META PROMPT", 2) == ["1. first\n2. second"]
    assert llm.usage == {"calls": 1, "prompt_tokens": 11, "completion_tokens": 7}
    assert llm.faults == {}
    assert llm.propose("again", 1) == ["3. third"]
    assert llm.usage == {"calls": 2, "prompt_tokens": 16, "completion_tokens": 9}
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "META PROMPT"}]
    assert body["temperature"] == 0.3
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 99
    assert sleeps == []


def test_reply_without_usage_counts_calls_only(server, sleeps):
    server.script = [Reply(body=completion("a prompt", usage=False))]
    llm = make(server)
    assert llm.propose("m", 1) == ["a prompt"]
    assert llm.usage == {"calls": 1}


def test_rate_limit_is_retried_after_retry_after(server, sleeps):
    server.script = [Reply(429, error("slow down", "rate_limit_exceeded"), {**JSON, "Retry-After": "0"}),
                     Reply(body=completion("after the wait"))]
    llm = make(server, retries=2, backoff_s=10.0, max_backoff_s=30.0)
    assert llm.propose("m", 1) == ["after the wait"]
    assert llm.faults == {"rate_limit": 1}
    assert llm.usage["calls"] == 2
    assert len(server.requests) == 2
    assert sleeps == [0.0]  # the server's Retry-After, not the 10 s backoff


def test_retry_after_is_capped_by_max_backoff(server, sleeps):
    server.script = [Reply(429, error("slow"), {**JSON, "Retry-After": "120"}), Reply(body=completion("ok"))]
    llm = make(server, max_backoff_s=2.5)
    assert llm.propose("m", 1) == ["ok"]
    assert sleeps == [2.5]


def test_server_error_is_retried(server, sleeps):
    server.script = [Reply(500, error("boom", "server_error")), Reply(body=completion("recovered"))]
    llm = make(server, backoff_s=0.01)
    assert llm.propose("m", 1) == ["recovered"]
    assert llm.faults == {"server_error": 1}
    assert len(server.requests) == 2
    assert len(sleeps) == 1 and 0.005 <= sleeps[0] <= 0.01


def test_backoff_grows_and_is_capped(server, sleeps):
    server.script = [Reply(503, error("busy")) for _ in range(4)]
    llm = make(server, retries=3, backoff_s=1.0, max_backoff_s=3.0)
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == "server_error"
    assert llm.faults == {"server_error": 4}
    assert len(server.requests) == 4
    assert len(sleeps) == 3  # none after the last attempt
    for wait, cap in zip(sleeps, [1.0, 2.0, 3.0], strict=True):
        assert cap / 2 <= wait <= cap


def test_timeout_is_counted_and_raises_after_retries(server, sleeps):
    server.script = [Reply(body=completion("too late"), hang_s=2.0) for _ in range(2)]
    llm = make(server, timeout_s=0.5, retries=1)
    start = time.monotonic()
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    elapsed = time.monotonic() - start
    assert info.value.kind == "timeout"
    assert llm.faults == {"timeout": 2}
    assert llm.usage == {"calls": 2}
    assert len(server.requests) == 2
    assert elapsed < 1.9  # two 0.5 s timeouts, not the 2 s hangs


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>Bad gateway</html>", headers={"Content-Type": "text/html"}),
        Reply(body=b"plain text, not JSON", headers={"Content-Type": "text/plain"}),
        Reply(body=b"{not json at all", headers=dict(JSON)),
        Reply(body=b"", headers=dict(JSON)),
        Reply(body={"error": "no choices here"}),
        Reply(body={**completion(), "choices": []}),
    ],
    ids=["html", "text", "broken-json", "empty-body", "no-choices", "empty-choices"],
)
def test_bad_response_is_retried_then_raises(server, sleeps, reply):
    server.script = [reply, reply]
    llm = make(server, retries=1)
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == "bad_response"
    assert llm.faults == {"bad_response": 2}
    assert len(server.requests) == 2


def test_bad_response_then_success(server, sleeps):
    server.script = [Reply(body=b"oops", headers={"Content-Type": "text/plain"}), Reply(body=completion("fine"))]
    llm = make(server)
    assert llm.propose("m", 1) == ["fine"]
    assert llm.faults == {"bad_response": 1}


def test_connection_refused(no_proxy, sleeps):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, retries=1, backoff_s=0,
                     timeout_s=2.0)
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == "connection"
    assert llm.faults == {"connection": 2}
    assert len(sleeps) == 1


@pytest.mark.parametrize("content", ["", None, "   \n  "])
def test_empty_content_returns_it_and_counts(server, sleeps, content):
    server.script = [Reply(body=completion(content))]
    llm = make(server)
    assert llm.propose("m", 1) == [content or ""]
    assert llm.faults == {"empty_reply": 1}
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_not_retried(server, sleeps, status):
    server.script = [Reply(status, error("no")), Reply(body=completion("must not be reached"))]
    llm = make(server, retries=3)
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == f"http_{status}"
    assert llm.faults == {f"http_{status}": 1}
    assert llm.usage == {"calls": 1}
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [408, 409])
def test_request_timeout_and_conflict_are_retried(server, sleeps, status):
    server.script = [Reply(status, error("again")), Reply(body=completion("second try"))]
    llm = make(server)
    assert llm.propose("m", 1) == ["second try"]
    assert llm.faults == {f"http_{status}": 1}


def test_exhausted_retries_raise_last_kind(server, sleeps):
    server.script = [Reply(500, error("a")), Reply(429, error("b"), {**JSON, "Retry-After": "0"})]
    llm = make(server, retries=1)
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == "rate_limit"
    assert llm.faults == {"server_error": 1, "rate_limit": 1}


# -- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["localhost:8000", "ftp://x", "http://", "", "127.0.0.1:8000/v1", "//host/v1"])
def test_malformed_base_url(base_url):
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChat("m", base_url=base_url, api_key_env=None)


def test_missing_or_empty_api_key_env(monkeypatch):
    monkeypatch.delenv("RLS_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="RLS_TEST_KEY"):
        OpenAIChat("m", base_url="http://127.0.0.1:1/v1", api_key_env="RLS_TEST_KEY")
    monkeypatch.setenv("RLS_TEST_KEY", "")
    with pytest.raises(ValueError, match="RLS_TEST_KEY"):
        OpenAIChat("m", base_url="http://127.0.0.1:1/v1", api_key_env="RLS_TEST_KEY")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"retries": -1}, "retries"),
        ({"backoff_s": -1.0}, "backoff_s"),
        ({"max_backoff_s": -1.0}, "max_backoff_s"),
        ({"style": "json"}, "style"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        OpenAIChat(**kwargs)


def test_key_removed_after_construction_is_a_config_error(server, monkeypatch, sleeps):
    monkeypatch.setenv("RLS_TEST_KEY", SENTINEL_KEY)
    llm = make(server, api_key_env="RLS_TEST_KEY")
    monkeypatch.delenv("RLS_TEST_KEY")
    with pytest.raises(LLMError) as info:
        llm.propose("m", 1)
    assert info.value.kind == "config"
    assert server.requests == []


# -- pickling ----------------------------------------------------------------------------------------------------


def test_pickle_after_use_holds_no_key_and_still_works(server, monkeypatch, sleeps):
    monkeypatch.setenv("RLS_TEST_KEY", SENTINEL_KEY)
    server.script = [Reply(500, error("once")), Reply(body=completion("before", 3, 4)),
                     Reply(body=completion("after", 1, 1))]
    llm = make(server, api_key_env="RLS_TEST_KEY")
    assert llm.propose("m", 1) == ["before"]
    assert server.requests[-1]["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert llm._client is not None  # a live client holding the key exists now

    data = pickle.dumps(llm)
    assert SENTINEL_KEY.encode() not in data
    assert b"SENTINEL" not in data
    assert SENTINEL_KEY.encode("utf-16-le") not in data

    restored = pickle.loads(data)
    assert restored._client is None
    assert restored.api_key_env == "RLS_TEST_KEY"
    assert llm.usage == {"calls": 2, "prompt_tokens": 3, "completion_tokens": 4}
    assert restored.usage == llm.usage
    assert restored.faults == {"server_error": 1}
    assert restored.propose("m", 1) == ["after"]
    assert server.requests[-1]["authorization"] == f"Bearer {SENTINEL_KEY}"  # read again from the environment
    assert restored.usage["calls"] == llm.usage["calls"] + 1
    assert restored.usage["completion_tokens"] == 5
    assert llm.usage["completion_tokens"] == 4  # the original is independent
    assert SENTINEL_KEY.encode() not in pickle.dumps(restored)


# -- make_llm: what the example scripts' --llm flags build ------------------------------------------------------


def test_make_llm_builds_the_client_the_flags_name(monkeypatch):
    from ray_llm_search import LocalLLM, make_llm

    keyless = make_llm("openai", base_url="http://127.0.0.1:1/v1", api_key_env="")
    assert isinstance(keyless, OpenAIChat) and keyless.model == "gpt-4o-mini" and keyless.api_key_env is None
    monkeypatch.delenv("RLS_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="'RLS_TEST_UNSET_KEY'"):
        make_llm("openai", "m", api_key_env="RLS_TEST_UNSET_KEY")
    local = make_llm("local", seed=3, load=False, max_new_tokens=24)
    assert isinstance(local, LocalLLM) and (local.seed, local.max_new_tokens, local._model) == (3, 24, None)
    served = make_llm("llama-cpp", seed=5, load=False, threads=2)  # nothing started before load()
    assert isinstance(served, OpenAIChat) and (served.source, served.threads, served.seed, served.server) == (
        "qwen2.5-coder-1.5b", 2, 5, None)
    assert served.style == "chat" and served.temperature == 0.8 and served.api_key_env is None
    with pytest.raises(ValueError, match=r"LLM kind must be one of \('local', 'openai', 'llama-cpp'\), got 'vllm'"):
        make_llm("vllm")


def test_the_llm_dtype_flag_reaches_the_local_model_and_the_comparison_keeps_float32():
    """``--llm-dtype``: the quickstart's default is ``auto``; the comparison's is ``float32``, the precision every
    recorded run's mentor had, so runs merged across invocations ask the same mentor."""
    import argparse

    from ray_llm_search.compare import parse_args as compare_args
    from ray_llm_search.flags import add_llm_flags, llm_from_flags

    p = argparse.ArgumentParser()
    add_llm_flags(p)
    assert p.parse_args([]).llm_dtype == "auto"
    args = p.parse_args(["--llm-dtype", "bfloat16"])
    args.seed = 2
    assert llm_from_flags(args, load=False).dtype == "bfloat16"
    assert compare_args([]).llm_dtype == "float32"
    # one sampler, transformers' generate: no flag chooses another
    with pytest.raises(SystemExit):
        p.parse_args(["--llm-decode", "loop"])
    with pytest.raises(SystemExit):
        p.parse_args(["--llm-dtype", "float16"])
