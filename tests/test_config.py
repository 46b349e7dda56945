"""``SearchConfig``: the search's settings in one validated dataclass, in the saved state and the records; a state
saved by the version before it still restores and finishes its run identically."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import sys

import pytest

from ray_llm_search import SearchConfig, presets
from ray_llm_search.searcher import LLMSearch
from ray_llm_search.testing import ScriptedLLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
sys.path.insert(0, FIXTURES)
sys.path.insert(0, os.path.dirname(FIXTURES))
import make_state_v1 as v1  # noqa: E402
from test_bad_input import SEARCH_ROWS  # noqa: E402

# -- a saved state of the previous version ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(v1.CASES))
def test_a_state_saved_by_the_previous_version_restores_and_finishes_the_run_identically(tmp_path, name):
    with open(os.path.join(FIXTURES, f"state_v1_{name}.json"), encoding="utf-8") as f:
        expected = json.load(f)
    with open(os.path.join(FIXTURES, f"state_v1_{name}.pkl"), "rb") as f:
        state = pickle.load(f)
    assert "config" not in state  # the previous version's format
    state["log_dir"] = str(tmp_path / "log")  # the fixture's own log_dir was a temporary folder
    llm = ScriptedLLM()
    llm.calls = expected["llm_calls"]  # its candidates are numbered by call, as the saving search's LLM's were
    search = LLMSearch(llm, v1.TASK, v1.SEEDS, metric=v1.METRIC, mode="max", log_dir=str(tmp_path / "other"),
                       **expected["case"]["kwargs"])
    search.set_state(state)
    handed = v1.finish(search, expected["counter"])
    got = json.loads(json.dumps(v1.outcome(search, handed)))
    # new in every record: the search's settings (the records restored from the old state have none)
    configs = [record.pop("config", None) for record in got["records"]]
    assert got == {k: expected[k] for k in ("handed", "records", "best")}
    assert configs[-1] == search.config.to_dict() and configs[-1]["preset"] == "custom"
    assert (tmp_path / "log" / "best.json").exists()


def test_a_searcher_pickled_by_the_previous_version_unpickles_and_finishes_the_run_identically():
    """Tune pickles the whole searcher into the experiment's state (``tuner.pkl``): one of the previous version,
    pickled mid-run, takes up its settings as a custom ``SearchConfig`` and ends its run as it would have."""
    log_dir = "/tmp/rls-fixture-v1-searcher"  # the pickled searcher's own
    shutil.rmtree(log_dir, ignore_errors=True)
    with open(os.path.join(FIXTURES, "searcher_v1_screened.json"), encoding="utf-8") as f:
        expected = json.load(f)
    try:
        with open(os.path.join(FIXTURES, "searcher_v1_screened.pkl"), "rb") as f:
            search = pickle.load(f)
        assert search.config == SearchConfig(task_description=v1.TASK, seed_prompts=v1.SEEDS, preset="custom",
                                             log_dir=log_dir, meta_prompt_style="chat",
                                             **v1.CASES["screened"]["kwargs"])
        got = json.loads(json.dumps(v1.outcome(search, v1.finish(search, expected["counter"]))))
        for record in got["records"]:
            record.pop("config", None)
        assert got == {k: expected[k] for k in ("handed", "records", "best")}
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


# -- the old argument table, now SearchConfig's ----------------------------------------------------------------

BASE = {"task_description": "Classify news.", "seed_prompts": ["the topic is"], "population": 4, "generations": 2,
        "elites": 1, "log_dir": "/tmp/rls-config-never-written"}
SEARCHER_OWN = ("llm", "metric", "mode")  # the searcher's arguments, not settings
CONFIG_ROWS = [row for row in SEARCH_ROWS if not set(row[1]) & set(SEARCHER_OWN)]


def test_every_row_of_the_old_argument_table_is_a_setting_or_the_searchers_own():
    assert len(CONFIG_ROWS) == len(SEARCH_ROWS) - 3
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    assert all(set(kwargs) <= fields for _, kwargs, _ in CONFIG_ROWS)


@pytest.mark.parametrize("kwargs, fragment", [row[1:] for row in CONFIG_ROWS], ids=[row[0] for row in CONFIG_ROWS])
def test_search_config_refuses_every_bad_value_of_the_old_table_with_its_message(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        SearchConfig(**{**BASE, **kwargs})
    assert fragment in str(info.value)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"steps": 0}, "steps must be None or an integer >= 1, got 0"),
    ({"preset": "best"}, "preset must be one of"),
    ({"preset": "authors", "population": 0}, "population must be an integer >= 1, got 0"),
    ({"preset": "authors", "screen_test": "t"}, "screen_test must be 'gain' or 'paired', got 't'"),
])
def test_search_config_refuses_bad_design_settings(kwargs, fragment):
    base = {k: v for k, v in BASE.items() if k not in ("population", "generations", "elites")}
    with pytest.raises(ValueError) as info:
        SearchConfig(**{**base, **kwargs})
    assert fragment in str(info.value)


def test_a_named_presets_numbers_are_checked_when_it_is_resolved():
    with pytest.raises(ValueError, match="multiple of eval_every"):
        LLMSearch(ScriptedLLM(), "t", ["a"], metric="acc", mode="max", preset="chains-paired", steps=8, eval_every=3)


def test_every_setting_has_help_text():
    for f in dataclasses.fields(SearchConfig):
        assert f.metadata.get("help"), f.name
    assert SearchConfig.help().count("\n") == len(dataclasses.fields(SearchConfig)) - 1


# -- plain data --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    {},
    {"population": 3, "schedule": [{"steps": 0}, {"screen": 2}], "elites": 3, "overlap": True,
     "llm_budget": {"calls": 4, "cost": 1.5, "prices": {"prompt": 0.1, "completion": 0.2}}, "mix_alpha": 1},
    {"preset": "halving", "steps": 8, "eval_every": 4, "select": "metric", "prompt_tokens": 8},
])
def test_a_config_round_trips_through_a_json_dict(settings):
    config = SearchConfig(task_description="t", seed_prompts=[" a ", "b"], **settings)
    data = json.loads(json.dumps(config.to_dict()))
    assert SearchConfig.from_dict(data) == config
    assert SearchConfig.from_dict(data).to_dict() == data
    assert config.resolvable is ("steps" in settings or "population" in settings)
    if config.resolvable:
        assert SearchConfig.from_dict(json.loads(json.dumps(config.resolved().to_dict()))) == config.resolved()


def test_from_dict_refuses_unknown_settings():
    with pytest.raises(ValueError, match=r"SearchConfig has no settings \['populaton'\]"):
        SearchConfig.from_dict({"seed_prompts": ["a"], "populaton": 3})


def test_the_saved_state_and_every_record_hold_the_config(tmp_path):
    search = LLMSearch(ScriptedLLM(), "t", ["a", "b"], metric="acc", mode="max", population=2, generations=2,
                       log_dir=str(tmp_path))
    from ray_llm_search.testing import drive

    drive(search)
    assert search.get_state()["config"] == search.config.to_dict()
    lines = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [line["config"] for line in lines] == [search.config.to_dict()] * 2


# -- one default: the recommended design ------------------------------------------------------------------------


TASK, SEEDS = "toy task", ["first seed", "second seed", "third seed"]


def _handed(search, n: int) -> list[dict]:
    return [{k: v for k, v in search.suggest(f"t{i}").items() if k != "vector_dir"} for i in range(n)]


def test_the_constructor_and_from_preset_build_the_same_design(tmp_path):
    made = LLMSearch.from_preset(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", steps=2, eval_every=1,
                                 log_dir=str(tmp_path))
    given = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", steps=2, eval_every=1,
                      log_dir=str(tmp_path))
    tuned = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", log_dir=str(tmp_path))
    assert tuned.config.preset == presets.DEFAULT and tuned.preset == presets.DEFAULT
    with pytest.raises(ValueError, match="computes its schedule from the trial config's steps and eval_every"):
        _ = tuned.total_trials
    tuned.set_search_properties(None, None, {"steps": 2, "eval_every": 1, "lr": 0.1})  # what Tune hands over
    assert made.config == given.config == tuned.config
    assert made.config.preset == presets.DEFAULT and made.preset == presets.DEFAULT
    assert made.config.resolved() == tuned.config.resolved()
    assert made.total_trials == tuned.total_trials == 5  # one chain: 4 short phases, one long descent
    assert (made.population, made.elites, made.overlap, made.select, made.seed_prompts) == (
        1, 1, True, "loss", SEEDS[:1])
    assert made.schedule == presets.preset(steps=2, eval_every=1)["schedule"] == tuned.schedule
    assert _handed(made, 1) == _handed(given, 1) == _handed(tuned, 1)
    assert presets.search_config(task_description=TASK, seed_prompts=SEEDS, steps=2, eval_every=1,
                                 log_dir=str(tmp_path)) == made.config


def test_the_default_design_without_steps_says_what_it_needs(tmp_path):
    search = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", log_dir=str(tmp_path))
    search.set_search_properties(None, None, {"lr": 0.1})  # no steps in the param space
    with pytest.raises(ValueError, match="pass them"):
        search.suggest("t0")
    assert search.best() is None and search.records == [] and search.trajectories == []


def test_the_shape_given_makes_a_custom_design_as_before(tmp_path):
    search = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", population=2, log_dir=str(tmp_path))
    assert search.config.preset == "custom" and search.preset is None
    assert (search.population, search.generations, search.elites, search.screen, search.overlap) == (2, 3, 1, 0,
                                                                                                       False)
    assert search.total_trials == 7  # max(population, seeds) + 2 + 2


def test_a_preset_restored_from_a_state_takes_its_config(tmp_path):
    made = LLMSearch.from_preset(ScriptedLLM(), TASK, SEEDS, "chains-paired", metric="acc", mode="max", steps=2,
                                 eval_every=1, log_dir=str(tmp_path))
    _handed(made, 2)
    state = pickle.loads(pickle.dumps(made.get_state()))
    restored = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", log_dir=str(tmp_path))
    restored.set_state(state)
    assert restored.config == made.config and restored.preset == "chains-paired"
    assert _handed(restored, 2) == _handed(made, 2)


# -- how the settings are passed ---------------------------------------------------------------------------------


def test_settings_go_in_config_or_as_keywords_not_both(tmp_path):
    config = SearchConfig(task_description=TASK, seed_prompts=SEEDS, population=2, log_dir=str(tmp_path))
    a = LLMSearch(ScriptedLLM(), config=config, metric="acc", mode="max")
    b = LLMSearch(ScriptedLLM(), config, metric="acc", mode="max")
    c = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", population=2, log_dir=str(tmp_path))
    assert a.config == b.config == c.config == config
    with pytest.raises(ValueError, match=r"either as config=SearchConfig\(...\) or as arguments, not both: got "
                                         r"config=SearchConfig and \['population'\]"):
        LLMSearch(ScriptedLLM(), config=config, population=3)
    with pytest.raises(ValueError, match="not both"):
        LLMSearch(ScriptedLLM(), TASK, config=config)
    with pytest.raises(TypeError, match="unexpected keyword argument 'populaton'"):
        LLMSearch(ScriptedLLM(), TASK, SEEDS, populaton=3)


def test_positional_settings_still_work_for_one_release_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"by keyword: pass metric=\.\.\., mode=\.\.\., population=\.\.\."):
        old = LLMSearch(ScriptedLLM(), TASK, SEEDS, "acc", "max", 2, log_dir=str(tmp_path))
    new = LLMSearch(ScriptedLLM(), TASK, SEEDS, metric="acc", mode="max", population=2, log_dir=str(tmp_path))
    assert old.config == new.config and (old.metric, old.mode) == ("acc", "max")
    with pytest.raises(TypeError, match="multiple values for argument 'metric'"):
        LLMSearch(ScriptedLLM(), TASK, SEEDS, "acc", metric="acc")


def test_the_package_root_exports_the_public_surface_and_internals_move_to_their_modules():
    import ray_llm_search

    assert ray_llm_search.__all__ == ["CachedLLM", "LLM", "LLMError", "LLMSearch", "LlamaCppChat", "LocalLLM",
                                      "OpenAIChat", "SearchConfig", "make_llm", "presets"]
    assert ray_llm_search.presets is presets
    from ray_llm_search.pool import PromptPool

    with pytest.warns(DeprecationWarning, match="import it from ray_llm_search.pool"):
        assert ray_llm_search.PromptPool is PromptPool
