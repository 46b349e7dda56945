"""End-to-end: real Ray Tune, the real MiniLM soft-prompt trainable and the real SmolLM2 mentor, on CPU."""

from __future__ import annotations

import csv
import json
import os
import pickle

import pytest
import torch

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402

from ray_llm_search import LLMSearch, LocalLLM  # noqa: E402
from trainables.data import bbc_news_spec  # noqa: E402
from trainables.text_prompt import train_text_prompt  # noqa: E402

pytestmark = pytest.mark.slow

TASK = "Classify a BBC news article into business, entertainment, politics, sport or technology."
SEEDS = ["the topic of this news article is", "news category:"]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def llm():
    model = LocalLLM(seed=0, max_new_tokens=16)
    model.load()
    return model


def base_config():
    return {
        "data": bbc_news_spec(shots=2, val_shots=2, test_size=10, seed=0),
        "steps": 2,
        "eval_every": 1,
        "batch_size": 4,
        "max_length": 32,
        "prompt_length": 4,
    }


def _check_run(search: LLMSearch, llm: LocalLLM, calls_before: int, generations: int) -> None:
    records = search.records
    assert [r["generation"] for r in records] == list(range(generations))
    assert llm.usage["calls"] - calls_before == generations - 1  # one LLM round per later generation
    for trajectory in search.trajectories:
        assert trajectory.status in ("finished", "error")
    gen1 = [t for t in search.trajectories if t.generation == 1]
    assert len(gen1) == search.population
    elites = [t for t in gen1 if t.origin == "elite"]
    assert len(elites) == search.elites
    assert elites[0].resume_from and os.path.isfile(elites[0].resume_from)
    assert {t.origin for t in gen1} - {"elite"} <= {"llm", "pool"}
    best = search.best()
    assert best is not None and os.path.isfile(best["vectors_path"])
    with open(os.path.join(search.log_dir, "best.json")) as f:
        assert json.load(f)["trial_id"] == best["trial_id"]
    with open(os.path.join(search.log_dir, "generations.jsonl")) as f:
        assert len(f.read().splitlines()) == generations
    with open(os.path.join(search.log_dir, "evaluations.csv"), newline="") as f:  # results as data, for notebooks
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(t.evaluations) for t in search.trajectories)
    assert {r["trial_id"] for r in rows} == {t.trial_id for t in search.trajectories}


def test_tune_run_with_real_models(ray_session, llm, tmp_path):
    calls = llm.usage["calls"]
    search = LLMSearch(llm, TASK, SEEDS, metric="val_acc", mode="max", population=2, generations=2, elites=1,
                       log_dir=str(tmp_path / "exp"), max_prompt_words=12)
    analysis = tune.run(
        train_text_prompt, config=base_config(), search_alg=search, num_samples=search.total_trials,
        storage_path=str(tmp_path), name="exp", resources_per_trial={"cpu": 1}, verbose=0,
    )
    assert len(analysis.trials) == 4
    for trial in analysis.trials:
        result = trial.last_result
        assert {"val_acc", "loss", "prompt_text", "step"} <= set(result)
        assert result["step"] == 2
    _check_run(search, llm, calls, generations=2)
    # Every reported trajectory point reached the searcher: steps 0, 1, 2 per phase.
    assert all([e.step for e in t.evaluations] == [0, 1, 2] for t in search.trajectories)
    # The searcher state that Tune saved next to the experiment has no model inside and restores.
    state = search.get_state()
    assert b"LlamaForCausalLM" not in pickle.dumps(state)


def test_tuner_fit_with_limiter_and_asha(ray_session, llm, tmp_path):
    calls = llm.usage["calls"]
    search = LLMSearch(llm, TASK, SEEDS, population=3, generations=2, elites=1, log_dir=str(tmp_path / "asha"))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=3, grace_period=1, reduction_factor=2)
    config = {**base_config(), "steps": 3}
    tuner = tune.Tuner(
        train_text_prompt,
        param_space=config,
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", search_alg=ConcurrencyLimiter(search, max_concurrent=2),
            scheduler=scheduler, num_samples=search.total_trials,
        ),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6
    assert not results.errors
    _check_run(search, llm, calls, generations=2)
    # A phase would report 4 times (steps 0..3); ASHA stops every one by max_t=3 iterations at the latest,
    # and the generations still completed from the partial trajectories.
    lengths = sorted(len(t.evaluations) for t in search.trajectories)
    assert 1 <= lengths[0] and lengths[-1] <= 3


def test_local_llm_proposes_real_text(llm):
    from ray_llm_search.mentor import Mentor
    from ray_llm_search.pool import Evaluation, Trajectory

    t = Trajectory("a", 0, "seed", "news category:", evaluations=[Evaluation(0, "news category", 0.9, 0.6)])
    mentor = Mentor(TASK, "val_acc", "max", max_words=12)
    replies = llm.propose(mentor.build([t], 4, style="completion"), 4)
    assert len(replies) == 4 and all(isinstance(r, str) for r in replies)
    parsed = mentor.parse(replies, 4)
    assert sum(parsed.rejected.values()) + len(parsed.candidates) >= 1
    blob = pickle.dumps(llm)
    assert len(blob) < 100_000  # the 135M model is not pickled with the searcher


def test_the_local_llm_runs_in_the_precision_it_is_given(llm):
    """``dtype``: the real SmolLM2 loads its weights as bfloat16 or float32 and proposes text either way;
    ``"auto"`` is what the machine computes natively (the fixture's model)."""
    from ray_llm_search.llm.local import _native_dtype
    from ray_llm_search.mentor import Mentor
    from ray_llm_search.pool import Evaluation

    meta = Mentor(TASK, "val_acc").build_scored([Evaluation(0, s, 0.5, 0.4 + 0.1 * i) for i, s in enumerate(SEEDS)],
                                                 4, style="completion")

    assert llm.resolved_dtype() == _native_dtype("cpu")
    assert {p.dtype for p in llm._model.parameters()} == {getattr(torch, llm.resolved_dtype())}
    for name in ("bfloat16", "float32"):
        one = LocalLLM(seed=1, max_new_tokens=8, dtype=name)
        one.load()
        assert {p.dtype for p in one._model.parameters()} == {getattr(torch, name)}
        # bfloat16 on a CPU: eager attention; otherwise transformers' own
        attention = one._model.config._attn_implementation
        assert (attention == "eager") == (name == "bfloat16"), attention
        replies = one.propose(meta, 4)
        assert len(replies) == 4 and any(r.strip() for r in replies), replies


def test_the_local_llm_stops_at_the_newline_with_the_same_candidates(llm):
    """Completion style keeps each continuation's first line; stopping once every row has ended it gives the
    same candidates for fewer generated tokens."""
    from ray_llm_search.mentor import Mentor
    from ray_llm_search.pool import Evaluation

    meta = Mentor(TASK, "val_acc").build_scored([Evaluation(0, s, 0.5, 0.4 + 0.1 * i) for i, s in enumerate(SEEDS)],
                                                 8, style="completion")
    plain = LocalLLM(seed=3, max_new_tokens=24, stop_at_newline=False)
    plain._model, plain._tokenizer = llm._model, llm._tokenizer  # the same weights, loaded once
    stopping = LocalLLM(seed=3, max_new_tokens=24)
    stopping._model, stopping._tokenizer = llm._model, llm._tokenizer
    assert stopping.propose(meta, 8) == plain.propose(meta, 8)
    assert stopping.stop_at_newline  # this transformers has stop_strings
    assert stopping.usage["completion_tokens"] < plain.usage["completion_tokens"]


def test_the_local_llm_runs_the_meta_prompt_once_for_every_continuation(llm):
    """``share_prefix``: the meta-prompt goes through the model once, not once per continuation (counted at the
    embedding layer), and the candidates are the same as generating each row from scratch."""
    from ray_llm_search.mentor import Mentor
    from ray_llm_search.pool import Evaluation

    history = [Evaluation(i, f"{s} {i}", 0.5, 0.3 + 0.05 * i) for i, s in enumerate(SEEDS * 4)]
    meta = Mentor(TASK, "val_acc").build_scored(history, 8, style="completion")
    prompt_tokens = llm._tokenizer(meta, return_tensors="pt").input_ids.shape[1]
    embedded: list[int] = []
    hook = llm._model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: embedded.append(int(args[0].numel())))
    try:
        answers, counts = {}, {}
        for share in (False, True):
            one = LocalLLM(seed=5, max_new_tokens=24, share_prefix=share)
            one._model, one._tokenizer = llm._model, llm._tokenizer
            embedded.clear()
            answers[share] = one.propose(meta, 12)
            counts[share] = sum(embedded)
    finally:
        hook.remove()
    assert answers[True] == answers[False]
    assert len(answers[True]) == 12
    assert counts[False] >= 12 * prompt_tokens  # each row embeds the whole prompt
    assert counts[True] < 2 * prompt_tokens + 12 * 24  # the prompt once, then one token per row and step
