"""LLM budgets (calls, tokens, cost) stop the asking at the limit and the run completes from the pool; a dry
run bounds what a configured search can spend without calling the LLM. Against the fake OpenAI server, and
once through real ``tune.run``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402

from ray_llm_search import LLM, LLMSearch, OpenAIChat  # noqa: E402

KEY_ENV = "RLS_BUDGET_TEST_KEY"
TASK = "Classify news by topic."
SEEDS = ["the topic is", "news about"]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-budget-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fake = helpers.FakeOpenAI([helpers.Reply(body=helpers.completion(f"1. idea {i} for news\n2. other {i} topic",
                                                                     prompt_tokens=100, completion_tokens=20))
                               for i in range(6)])
    yield fake
    fake.close()


def chat(server) -> OpenAIChat:
    return OpenAIChat("test-model", base_url=server.base_url, api_key_env=KEY_ENV, retries=0, timeout_s=10)


def drive(search: LLMSearch) -> None:
    count = 0
    while True:
        config = search.suggest(f"t{count}")
        if config == "FINISHED":
            return
        if config is None:
            time.sleep(0.005)
            continue
        trial, count = f"t{count}", count + 1
        result = {}
        for step in (0, 1):
            value = helpers.score(config["prompt_init"]) + 0.01 * step
            result = {"val_acc": value, "loss": 1 - value, "step": step, "prompt_text": config["prompt_init"]}
            search.on_trial_result(trial, result)
        search.on_trial_complete(trial, result)


def search_with(llm, tmp_path, budget, generations=4, **kw) -> LLMSearch:
    return LLMSearch(llm, TASK, SEEDS, metric="val_acc", mode="max", population=3, generations=generations,
                     elites=1, log_dir=str(tmp_path), llm_budget=budget, **kw)


@pytest.mark.parametrize("budget, asked", [
    ({"calls": 2}, 2),
    ({"tokens": 120}, 1),  # each ask costs 100 + 20 tokens: the first spends the whole limit
    ({"cost": 0.05, "prices": {"prompt": 0.2, "completion": 1.0}}, 2),  # 0.04 per ask: a third would overshoot
])
def test_rounds_past_a_limit_fill_from_the_pool_and_the_search_completes(server, tmp_path, budget, asked, caplog):
    llm = chat(server)
    search = search_with(llm, tmp_path, budget)
    with caplog.at_level(logging.WARNING, logger="ray_llm_search"):
        drive(search)
    assert len(server.requests) == asked == llm.usage["calls"]
    statuses = [r["llm"]["status"] for r in search.records[1:]]
    assert statuses == ["done"] * asked + ["budget"] * (3 - asked)
    for r in search.records[1 + asked:]:
        assert r["llm"]["candidates"] == [] and len(r["llm"]["filled"]) == 2  # the pool filled the new starts
        assert r["llm_budget"]["reached"] is True
    assert [r["generation"] for r in search.records] == [0, 1, 2, 3]
    assert search.records[-1]["llm_budget"]["spent"]["calls"] == asked
    assert sum(m.startswith("LLM budget reached") for m in caplog.messages) == 1  # said once, not per round
    with open(tmp_path / "generations.jsonl") as f:
        assert [json.loads(line)["llm"] and json.loads(line)["llm"]["status"] for line in f][1:] == statuses


@pytest.mark.parametrize("bad, says", [
    ({"calls": -1}, "llm_budget['calls'] must be a number >= 0"),
    ({"calls": 1.5}, "must be a whole number"),
    ({"cost": 1.0}, "llm_budget['cost'] needs prices"),
    ({"dollars": 3}, "unknown keys ['dollars']"),
    ({"tokens": 10, "prices": {"prompt": -1, "completion": 1}}, "must be a number >= 0 per 1,000 tokens"),
    ("10 calls", "llm_budget must be a dict"),
])
def test_a_bad_budget_is_a_clear_error(bad, says):
    with pytest.raises(ValueError, match=__import__("re").escape(says)):
        LLMSearch(helpers.CallLogLLM("/dev/null"), TASK, SEEDS, population=2, llm_budget=bad)


class Recording(LLM):
    """Answers with a numbered list; keeps every meta-prompt it was asked."""

    style = "chat"
    max_tokens = 64
    retries = 0

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        self.asked.append(meta_prompt)
        self._count(self.usage, calls=1)
        return ["\n".join(f"{i + 1}. {'quite a long proposal ' * 4} {len(self.asked)} {i}" for i in range(n))]


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_a_dry_run_bounds_what_the_search_then_asks_without_asking(tmp_path, style):
    llm = Recording()
    long_seeds = [("a very long seed prompt about the news " * 6).strip(), "short one", "news:"]
    search = LLMSearch(llm, TASK, long_seeds, metric="val_acc", mode="max", population=3, generations=4, elites=1,
                       log_dir=str(tmp_path), meta_prompt_style=style, max_prompt_words=40, llm_reasks=1,
                       llm_budget={"calls": 10, "prices": {"prompt": 1.0, "completion": 2.0}})
    plan = search.dry_run()
    assert llm.asked == []  # nothing asked
    assert plan["rounds"] == 3 and plan["max_calls"] == 3 * 2  # each round may ask twice (llm_reasks=1)
    assert long_seeds[0][:40] in plan["meta_prompt"]
    assert plan["max_completion_tokens_per_call"] == 64
    assert plan["max_tokens"] == plan["max_calls"] * (plan["max_prompt_tokens_per_call"] + 64)
    assert plan["max_cost"] == pytest.approx(6 * (plan["max_prompt_tokens_per_call"] * 1.0 + 64 * 2.0) / 1000)
    drive(search)
    assert 1 <= len(llm.asked) <= plan["max_calls"]
    # a meta-prompt never has more UTF-8 bytes than the bound allows tokens
    assert max(len(m.encode("utf-8")) for m in llm.asked) + 64 <= plan["max_prompt_tokens_per_call"]


def test_a_dry_run_with_one_price_gives_no_cost_bound(tmp_path):
    search = LLMSearch(Recording(), TASK, SEEDS, population=2, generations=2, log_dir=str(tmp_path),
                       llm_budget={"tokens": 1000, "prices": {"prompt": 1.0}})
    plan = search.dry_run()
    assert "max_cost" not in plan and plan["llm_budget"] == {"tokens": 1000}


def test_the_perturb_control_plans_no_llm_call(tmp_path):
    search = LLMSearch(Recording(), TASK, SEEDS, population=2, generations=3, elites=2, screen=2, proposals="perturb",
                       log_dir=str(tmp_path))
    assert search.dry_run()["max_calls"] == 0


@pytest.mark.slow
def test_a_budget_through_real_tune_run(server, tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    from ray_llm_search.records import SUMMARY_FILE

    llm = chat(server)
    search = search_with(llm, tmp_path / "log", {"calls": 1}, generations=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": helpers.HERE}})
    try:
        analysis = tune.run(helpers.trivial_phase, config={"steps": 1}, search_alg=search,
                            num_samples=search.total_trials, storage_path=str(tmp_path), name="budget",
                            resources_per_trial={"cpu": 1}, reuse_actors=True, verbose=0)
    finally:
        ray.shutdown()
    assert len(analysis.trials) == 3 + 3 + 3 and all(t.status == "TERMINATED" for t in analysis.trials)
    assert len(server.requests) == 1
    with open(tmp_path / "log" / SUMMARY_FILE) as f:
        records = [json.loads(line) for line in f]
    assert [r["llm"]["status"] for r in records[1:]] == ["done", "budget"]
    scalars, _ = helpers.read_events(str(tmp_path / "log" / "llm_search"))
    assert [v for _, v in scalars["llm_search/llm_budget_reached"]] == [0.0, 0.0, 1.0]  # generations 0, 1, 2
    assert [v for _, v in scalars["llm_search/llm_spent/calls"]] == [0.0, 1.0, 1.0]


def test_the_quickstart_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "examples", "quickstart.py"), "--dry-run",
                           "--storage", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1's meta-prompt" in done.stdout and "prompt: the topic of this news article is" in done.stdout
    assert "at most 3 LLM calls in 3 rounds" in done.stdout  # the default preset (authors): three rounds
    from trainables.benchmark_data import BENCHMARKS

    assert BENCHMARKS["bbc"].task in done.stdout  # the benchmark table's task, shown to the mentor
    assert not any(tmp_path.iterdir())  # no experiment folder: nothing ran
