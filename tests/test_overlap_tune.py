"""``LLMSearch(overlap=True)`` under real Ray Tune (CPU, a toy phase): the phase steps while its round is asked,
inside a ``ConcurrencyLimiter`` (which stops passing Tune's ``suggest`` calls to the searcher while its trial
runs: the round's candidates travel through the mailbox actor all the same)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from ray_llm_search import LLM, LLMSearch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
import rls_helpers as helpers  # noqa: E402

pytestmark = pytest.mark.slow

STEPPED = threading.Event()  # set by the callback once generation 1's phase has reported a step
ANSWERED_AFTER_A_STEP: list[bool] = []


class WaitsForAStep(LLM):
    """A mentor that answers only once the chain's phase has stepped: if the phase waited for the round (the
    serial design), it would answer after its 60 s wait with the gate still shut."""

    def propose(self, meta_prompt: str, n: int) -> list[str]:
        ANSWERED_AFTER_A_STEP.append(STEPPED.wait(60))
        return ["1. junk words\n2. xq zz"]


@pytest.fixture(scope="module")
def ray_session():
    yield from helpers.ray_session()


def test_the_phase_steps_while_its_round_is_asked(ray_session, tmp_path):
    from ray import tune
    from ray.tune import Callback
    from ray.tune.search import ConcurrencyLimiter

    rows: list[dict] = []

    class Watch(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows.append(dict(result))
            if result.get("generation") == 1 and result.get("step", 0) >= 1 and not result.get("screen"):
                STEPPED.set()

    schedule = [{"steps": 2, "eval_every": 2}, {"steps": 6, "eval_every": 1, "screen": 2},
                {"steps": 4, "eval_every": 2}]
    search = LLMSearch(WaitsForAStep(), "toy task", ["bad start"], metric="val_acc", mode="max", population=1,
                       elites=1, schedule=schedule, reuse_start_score=True, overlap=True, llm_timeout_s=120,
                       log_dir=str(tmp_path / "log"))
    from storage_phase import toy_phase

    tune.run(toy_phase, config={"step_sleep_s": 0.2}, search_alg=ConcurrencyLimiter(search, max_concurrent=1),
             num_samples=search.total_trials, storage_path=str(tmp_path / "storage"), verbose=0,
             callbacks=[Watch()], resources_per_trial={"cpu": 1})
    assert ANSWERED_AFTER_A_STEP == [True]  # the round ended after the chain's phase had stepped
    screened = [r for r in rows if r.get("screen") or r.get("adopted")]
    assert sorted(r.get("start_text") or r["prompt_text"] for r in screened) == ["junk words", "xq zz"]
    assert all(r["generation"] >= 1 and r["step"] >= 1 for r in screened)  # screened by a phase under way
    assert [r["generation"] for r in search.records] == [0, 1, 2]
    assert search.records[1]["llm"]["screened"] == ["junk words", "xq zz"]
    assert search.best() is not None
