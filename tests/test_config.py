"""``SearchConfig``: the search's settings in one validated dataclass, in the saved state and the records; a state
saved by the version before it still restores and finishes its run identically."""

from __future__ import annotations

import json
import os
import pickle
import sys

import pytest

from ray_llm_search.searcher import LLMSearch
from ray_llm_search.testing import ScriptedLLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
sys.path.insert(0, FIXTURES)
import make_state_v1 as v1  # noqa: E402


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
