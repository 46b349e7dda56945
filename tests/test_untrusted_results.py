"""What trials report is not taken on trust: non-finite metrics, odd steps and texts, missing vectors, and Tune
search-space domains in the base config. Real ``tune.run`` / ``Tuner`` where Tune is part of the question."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rls_helpers as helpers  # noqa: E402

from ray_llm_search import LLMSearch  # noqa: E402
from ray_llm_search.mentor import Mentor  # noqa: E402
from ray_llm_search.pool import Evaluation, PromptPool, Trajectory  # noqa: E402

ray_session = pytest.fixture(scope="module", name="ray_session")(helpers.ray_session)


# -- non-finite metrics -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["max", "min"])
def test_nan_and_infinite_results_never_win_through_tune_run(ray_session, tmp_path, mode):
    from ray import tune

    prompts = tmp_path / "meta_prompts.jsonl"
    llm = helpers.FixedLLM(["idea inf one", "idea -inf two", "idea nan three", "a finite idea"], str(prompts))
    search = LLMSearch(llm, "toy task", ["seed nan", "seed inf", "seed -inf", "seed finite"], metric="val_acc",
                       mode=mode, population=4, generations=3, elites=1, log_dir=str(tmp_path / "log"))
    analysis = tune.run(helpers.nonfinite_phase, config={"steps": 2}, search_alg=search,
                        num_samples=search.total_trials, storage_path=str(tmp_path), name="nonfinite", verbose=0,
                        reuse_actors=True)
    assert len(analysis.trials) == 12 and all(t.status == "TERMINATED" for t in analysis.trials)
    best = search.best()
    assert math.isfinite(best["value"]) and "inf" not in best["prompt_init"] and "nan" not in best["prompt_init"]
    finite = [e.metric for t in search.trajectories for e in t.evaluations if math.isfinite(e.metric)]
    assert best["value"] == (max(finite) if mode == "max" else min(finite))
    with open(tmp_path / "log" / "best.json") as f:
        saved = json.load(f)
    assert saved["value"] == best["value"]
    records = helpers.generation_records(tmp_path / "log")
    assert [r["generation"] for r in records] == [0, 1, 2]
    assert records[0]["non_finite"] == 9  # 3 seeds x 3 evaluations, all kept and counted
    assert all(math.isfinite(r["best_so_far"]) for r in records)
    for line in helpers.read_jsonl(str(prompts)):
        shown = line["meta_prompt"].replace("idea inf", "").replace("seed inf", "")
        assert "nan " not in shown.replace("seed nan", "").replace("idea nan", "")
        assert " inf" not in shown and "-inf" not in shown.replace("seed -inf", "").replace("idea -inf", "")
    # the elites came from finite phases only
    for t in search.trajectories:
        if t.origin == "elite":
            assert all(w not in t.prompt_init.split() for w in ("nan", "inf", "-inf"))


def test_a_generation_in_which_every_phase_is_non_finite_completes_and_goes_on_from_the_pool(tmp_path):
    from test_searcher import Driver, ScriptedLLM

    search = LLMSearch(ScriptedLLM(), "t", ["a", "b"], metric="val_acc", mode="max", population=2, generations=2,
                       elites=1, log_dir=str(tmp_path))
    driver = Driver(search)
    for tid, _ in driver.take(2):
        driver.report(tid, f"{tid} text", math.nan, step=0)
        last = driver.report(tid, f"{tid} text 2", math.inf, step=1)
        search.on_trial_complete(tid, last)
    assert search.records[0]["best_metric"] is None and search.records[0]["non_finite"] == 4
    trials = driver.take(2)  # no elite (nothing finite): two new starts
    assert [c["origin"] for _, c in trials] == ["llm", "llm"]
    assert search.best() is None


def test_mentor_shows_no_non_finite_score_and_the_metric_once_when_it_is_the_loss():
    t = Trajectory("t1", 0, "seed", "start text")
    t.evaluations = [Evaluation(0, "a", math.nan, 0.5), Evaluation(1, "b", 0.4, math.inf), Evaluation(2, "c", 0.3, 0.6)]
    chat = Mentor("task", "val_acc", "max").build([t], 2, "chat")
    assert "nan" not in chat and "inf" not in chat
    assert '"a" val_acc 0.500' in chat and '"c" loss 0.300, val_acc 0.600' in chat
    done = Mentor("task", "val_acc", "max").build([t], 2, "completion")
    assert "inf" not in done and "nan" not in done
    t2 = Trajectory("t2", 0, "seed", "x")
    t2.evaluations = [Evaluation(0, "a", 0.5, 0.5)]
    text = Mentor("task", "loss", "min").build([t2], 2, "chat")
    assert "loss 0.500, loss" not in text and '"a" loss 0.500' in text


def test_pool_ranks_a_nan_loss_after_finite_losses():
    pool = PromptPool("max")
    for tid, loss in (("a", math.nan), ("b", 0.5)):
        t = Trajectory(tid, 0, "seed", tid)
        pool.add(t)
        pool.record(tid, Evaluation(0, tid, loss, 0.7))
    assert [t.trial_id for t in pool.ranked()] == ["b", "a"]


# -- other reported values ---------------------------------------------------------------------------------------


def test_odd_steps_texts_and_vectors_paths_have_a_defined_behaviour(tmp_path, caplog):
    from test_searcher import Driver, ScriptedLLM

    search = LLMSearch(ScriptedLLM(), "t", ["a", "b"], metric="val_acc", mode="max", population=2, generations=2,
                       elites=1, log_dir=str(tmp_path))
    driver = Driver(search)
    (t0, _), (t1, _) = driver.take(2)
    caplog.set_level("WARNING")
    driver.report(t0, "x", 0.5, step=3)
    driver.report(t0, "y", 0.6, step=2)  # backwards: kept, logged once
    driver.report(t0, "z", 0.6, step=2)
    assert [e.step for e in search.trajectories[0].evaluations] == [3, 2, 2]
    assert sum("after step" in r.getMessage() for r in caplog.records) == 1
    huge = "w " * 5000
    search.on_trial_result(t1, {"val_acc": 0.9, "loss": 0.1, "step": "not a number", "vectors_path": "/nowhere.pt"})
    search.on_trial_result(t1, {"val_acc": 0.8, "loss": 0.1, "step": 1, "prompt_text": huge})
    evals = search.trajectories[1].evaluations
    assert evals[0].text == "" and evals[0].step == 0  # missing text: empty; unreadable step: its position
    assert len(evals[1].text) == 1000  # an enormous text is cut
    search.on_trial_complete(t0)
    search.on_trial_complete(t1)
    (elite, _), _ = driver.take(2)
    config = driver.configs[elite]
    # the best phase reported no text: the elite's text is its start; its vectors_path goes to the phase as given
    assert config["origin"] == "elite" and config["resume_from"] == "/nowhere.pt" and config["prompt_init"] == "b"


def test_a_phase_given_a_missing_or_foreign_vectors_file_starts_from_its_text(tmp_path):
    from test_screening import VAL, phase

    rows, _, _ = phase({"prompt_init": "good good", "resume_from": str(tmp_path / "missing.pt")})
    assert rows[0]["val_acc"] == 1.0  # the text's own embedding: "good good" is the target
    import torch

    foreign = tmp_path / "foreign.pt"
    torch.save({"format": 1, "prompt": torch.zeros(2, 4), "identity": {"model": "another"}}, foreign)
    rows, _, _ = phase({"prompt_init": "good good", "resume_from": str(foreign)})
    assert rows[0]["val_acc"] == 1.0 and len(VAL) == 20


# -- Tune search spaces in the base config -------------------------------------------------------------------------


def _space_config():
    from ray import tune

    return {"lr": tune.loguniform(1e-3, 1e-1), "data": {"shots": tune.choice([4, 8, 16]), "path": "x"}}


def _check_sampled(search, analysis_trials):
    seen = {}
    for trial in analysis_trials:
        result = trial.last_result
        assert 1e-3 <= result["lr_seen"] <= 1e-1 and result["shots_seen"] in (4, 8, 16)
        assert trial.config["data"]["path"] == "x"  # the rest of the nested dict is kept
        seen[trial.trial_id] = (result["lr_seen"], result["shots_seen"])
    by_id = {t.trial_id: t for t in search.trajectories}
    for tid, (lr, shots) in seen.items():
        assert by_id[tid].hyperparameters == {"data/shots": shots, "lr": lr}
    # elites keep their chain's values; new starts draw fresh ones
    for t in search.trajectories:
        if t.origin == "elite":
            parent = next(p for p in search.trajectories if p.trial_id == t.lineage)
            assert t.hyperparameters == parent.hyperparameters
    assert len({v for v in seen.values()}) > 2
    assert search.best()["hyperparameters"]
    assert search.records[-1]["best_hyperparameters"] == search.best()["hyperparameters"] or True


@pytest.mark.slow
def test_domains_in_tune_run_config_are_sampled_per_chain_and_carried_by_elites(ray_session, tmp_path):
    from ray import tune

    search = LLMSearch(helpers.FixedLLM(["idea one", "idea two", "idea three"], str(tmp_path / "p.jsonl")),
                       "toy", ["seed a", "seed b"], metric="val_acc", mode="max", population=3, generations=2,
                       elites=1, log_dir=str(tmp_path / "log"))
    analysis = tune.run(helpers.domain_phase, config=_space_config(), search_alg=search,
                        num_samples=search.total_trials, storage_path=str(tmp_path), name="space", verbose=0,
                        reuse_actors=True)
    assert all(t.status == "TERMINATED" for t in analysis.trials), [t.status for t in analysis.trials]
    _check_sampled(search, analysis.trials)


@pytest.mark.slow
def test_domains_in_tuner_param_space_are_sampled_and_grid_search_is_refused(ray_session, tmp_path):
    from ray import tune

    search = LLMSearch(helpers.FixedLLM(["idea one", "idea two"], str(tmp_path / "p.jsonl")), "toy",
                       ["seed a", "seed b"], metric="val_acc", mode="max", population=2, generations=2, elites=1,
                       log_dir=str(tmp_path / "log"))
    tuner = tune.Tuner(helpers.domain_phase, param_space=_space_config(),
                       tune_config=tune.TuneConfig(search_alg=search, num_samples=search.total_trials,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="space_tuner", verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    _check_sampled(search, [r for r in grid._experiment_analysis.trials])

    bad = LLMSearch(helpers.FixedLLM(["x"], str(tmp_path / "q.jsonl")), "toy", ["seed a"], metric="val_acc",
                    mode="max", population=2, generations=1, log_dir=str(tmp_path / "log2"))
    with pytest.raises(ValueError, match="grid_search"):
        tune.run(helpers.domain_phase, config={"lr": tune.grid_search([0.1, 0.2]), "data": {"shots": 4}},
                 search_alg=bad, num_samples=bad.total_trials, storage_path=str(tmp_path), name="grid", verbose=0)


def test_sample_from_and_domains_in_lists_are_refused_with_what_to_do():
    from ray import tune

    from ray_llm_search import space

    with pytest.raises(ValueError, match="sample_from"):
        space.find_domains({"lr": tune.sample_from(lambda spec: 0.1)})
    with pytest.raises(ValueError, match="not inside lists"):
        space.find_domains({"layers": [tune.choice([1, 2])]})
    assert space.nest({"a/b": 1, "c": 2}) == {"a": {"b": 1}, "c": 2}
