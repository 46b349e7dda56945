"""Screened starts, reused start scores, schedules and the no-LLM control, on a toy PromptModel (no backbone).

The toy's validation accuracy falls with the distance of the prompt vectors to a target, which the word "good"
embeds exactly; gradient steps move the vectors toward the target. So "good good" is a known better text, and
"junk" a known worse one.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch

from ray_llm_search import LLM, LLMSearch
from ray_llm_search.contract import PromptOnly
from ray_llm_search.testing import ScriptedLLM
from trainables.phase import examples_key, run_phase

TARGET = torch.tensor([[1.0, -1.0, 0.5, 0.0], [1.0, -1.0, 0.5, 0.0]])


NoHead = PromptOnly  # the head part of a PromptModel that trains nothing but the prompt


class Toy(NoHead):
    """A ``PromptModel``: 2 vectors of 4 dims; accuracy in steps of 1/len(val)."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.evaluations = 0

    def identity(self) -> dict:
        return {"model": "toy", "shape": [2, 4]}

    def init_vectors(self, text: str) -> torch.Tensor:
        rows = []
        for word in text.split() or ["empty"]:
            if word == "good":
                rows.append(TARGET[0])
            else:
                g = torch.Generator().manual_seed(sum(map(ord, word)))
                rows.append(torch.randn(4, generator=g) * 2)
        return torch.stack(rows).mean(0, keepdim=True).repeat(2, 1)

    def project(self, vectors: torch.Tensor) -> str:
        return f"proj {float(vectors.sum()):.3f}"

    def loss(self, vectors: torch.Tensor, batch: list) -> torch.Tensor:
        return ((vectors - TARGET) ** 2).sum()

    def evaluate(self, vectors: torch.Tensor, examples: list) -> tuple[float, float]:
        self.evaluations += 1
        dist = float(((vectors - TARGET) ** 2).sum())
        acc = math.floor(max(0.0, 1.0 - dist / 20.0) * len(examples)) / len(examples)
        return dist, acc


VAL = [("v", i) for i in range(20)]
TRAIN = [("t", i) for i in range(8)]


def phase(config: dict, val=VAL) -> tuple[list[dict], dict, Toy]:
    rows: list[dict] = []
    model = Toy()
    out = run_phase({"steps": 2, "eval_every": 1, "lr": 0.1, "phase_seed": 1, **config}, model, TRAIN, val,
                    report=lambda m, ckpt: rows.append(dict(m)))
    return rows, out, model


def test_a_better_candidate_is_adopted_and_the_loser_is_reported_as_a_screen():
    rows, out, model = phase({"prompt_init": "bad start", "prompt_candidates": ["good good", "junk"]})
    screens = [r for r in rows if r.get("screen")]
    assert [r["prompt_text"] for r in screens] == ["junk"]
    start = next(r for r in rows if r["step"] == 0 and not r.get("screen"))
    assert start["start"] == "candidate 0" and start["start_text"] == "good good" and start["val_acc"] == 1.0
    # own start + 2 candidates + 2 steps: every forward evaluation counted, none twice
    assert model.evaluations == 5 and rows[-1]["evaluations"] == 5 and out["evaluations"] == 5
    assert out["val_acc"] == 1.0


def test_candidates_that_do_not_beat_the_start_leave_it_in_place():
    rows, _, model = phase({"prompt_init": "good good", "prompt_candidates": ["junk", "bad start"]})
    start = next(r for r in rows if r["step"] == 0 and not r.get("screen"))
    assert start["start"] == "own" and start["val_acc"] == 1.0
    assert sorted(r["prompt_text"] for r in rows if r.get("screen")) == ["bad start", "junk"]
    assert model.evaluations == 5


def test_a_resumed_phase_reuses_its_saved_score_only_on_the_same_validation_examples(tmp_path):
    first, _, _ = phase({"prompt_init": "bad start", "vector_dir": str(tmp_path), "trial_id": "a"})
    path = first[-1]["vectors_path"]
    assert os.path.isfile(path)
    rows, _, model = phase({"prompt_init": "x", "resume_from": path, "reuse_start_score": True, "trial_id": "b",
                            "vector_dir": str(tmp_path)})
    best_first = max(r["val_acc"] for r in first)
    assert rows[0]["reused"] is True and rows[0]["val_acc"] == best_first and rows[0]["evaluations"] == 0
    assert model.evaluations == 2
    other_val = VAL[:10]
    assert examples_key(other_val) != examples_key(VAL)
    rows, _, model = phase({"prompt_init": "x", "resume_from": path, "reuse_start_score": True, "trial_id": "c",
                            "vector_dir": str(tmp_path)}, val=other_val)
    assert rows[0]["reused"] is False and model.evaluations == 3
    # without the flag the start is evaluated as before
    rows, _, model = phase({"prompt_init": "x", "resume_from": path, "trial_id": "d", "vector_dir": str(tmp_path)})
    assert rows[0]["reused"] is False and model.evaluations == 3


def test_a_warm_mix_starts_between_the_chain_and_the_candidate(tmp_path):
    first, _, _ = phase({"prompt_init": "junk", "steps": 0, "vector_dir": str(tmp_path), "trial_id": "a"})
    rows, _, _ = phase({"prompt_init": "junk", "resume_from": first[-1]["vectors_path"], "steps": 0,
                        "prompt_candidates": ["good good"], "candidate_start": "mix", "mix_alpha": 0.5})
    junk, good = Toy().init_vectors("junk"), Toy().init_vectors("good good")
    mixed = 0.5 * junk + 0.5 * good
    assert rows[0]["start"] == "candidate 0"
    assert rows[0]["loss"] == pytest.approx(float(((mixed - TARGET) ** 2).sum()), rel=1e-5)


def test_a_margin_keeps_a_one_example_gain_from_displacing_the_start():
    # a candidate must gain more than screen_margin validation examples over the start
    own, cand = "good junk junk", "good junk"
    scores = {t: Toy().evaluate(Toy().init_vectors(t), VAL) for t in (own, cand)}
    gain = round((scores[cand][1] - scores[own][1]) * len(VAL))
    assert gain >= 1
    rows, _, _ = phase({"prompt_init": own, "prompt_candidates": [cand], "screen_margin": gain})
    assert next(r for r in rows if r["step"] == 0 and not r.get("screen"))["start"] == "own"
    rows, _, _ = phase({"prompt_init": own, "prompt_candidates": [cand], "screen_margin": gain - 0.5})
    assert next(r for r in rows if r["step"] == 0 and not r.get("screen"))["start"] == "candidate 0"


@pytest.mark.parametrize("bad", [{"candidate_start": "warm"}, {"screen_margin": -1}, {"mix_alpha": 0}, {"mix_alpha": 1.5},
                                 {"prompt_candidates": "good good"}, {"prompt_candidates": [1]}])
def test_bad_screening_keys_are_refused(bad):
    with pytest.raises(ValueError):
        phase({"prompt_init": "x", **bad})


def Scripted(lines: list[str]) -> ScriptedLLM:
    """An LLM that answers every round with the same lines (one reply)."""
    return ScriptedLLM(then=["\n".join(lines)])


def drive(search: LLMSearch, max_wait_s: float = 30.0, base: dict | None = None, model=None) -> list[dict]:
    """Run a search in this process, trial after trial, as Tune would feed it; returns every reported row."""
    rows: list[dict] = []
    count, deadline = 0, time.monotonic() + max_wait_s
    while True:
        trial_id = f"t{count}"
        config = search.suggest(trial_id)
        if config == "FINISHED":
            return rows
        if config is None:
            assert time.monotonic() < deadline, "the searcher gave no trial"
            time.sleep(0.005)
            continue
        count += 1
        last: dict = {}

        def report(metrics: dict, ckpt, trial_id=trial_id, config=config, last=last) -> None:
            last.update(metrics)
            rows.append({**metrics, "trial_id": trial_id, "config": config})
            search.on_trial_result(trial_id, dict(metrics))

        run_phase({"eval_every": 1, "lr": 0.02, **(base or {}), **config, "trial_id": trial_id}, (model or Toy)(),
                  TRAIN, VAL, report=report)
        search.on_trial_complete(trial_id, dict(last))


SCHEDULE = [{"steps": 0}, {"steps": 2, "screen": 2}, {"steps": 2}]


def chains(tmp_path, llm: LLM, seeds=("bad start", "junk words"), **kw) -> LLMSearch:
    return LLMSearch(llm, "toy task", list(seeds), metric="val_acc", mode="max", population=2,
                     elites=2, schedule=SCHEDULE, reuse_start_score=True, log_dir=str(tmp_path), **kw)


GOOD_SEEDS = ("good good zz", "good good qq")


def test_a_garbage_mentor_never_displaces_a_chain_and_costs_only_its_screening(tmp_path):
    garbage = Scripted(["Sure! Here are prompts:", "junk", "xq zz", "good good zz", "qq qq", "zz xq"])
    search = chains(tmp_path / "llm", garbage, GOOD_SEEDS)
    rows = drive(search)
    assert garbage.usage["calls"] == 1  # one round: the generations after the first gradient one screen nothing
    assert search.records[1]["llm"]["screened"] == ["junk", "xq zz", "qq qq", "zz xq"]
    assert search.records[1]["llm"]["rejected"] == {"chatter": 1, "seen_before": 1}
    assert all(not r.get("adopted") for r in search.records)
    starts = [r for r in rows if r["step"] == 0 and not r.get("screen")]
    assert all(r["start"] == "own" for r in starts)
    # the same chains, with no candidates at all, reach the same best
    plain = LLMSearch(Scripted([]), "toy task", list(GOOD_SEEDS), metric="val_acc", mode="max",
                      population=2, elites=2, schedule=[{"steps": 0}, {"steps": 2}, {"steps": 2}],
                      reuse_start_score=True, log_dir=str(tmp_path / "plain"))
    drive(plain)
    assert search.best()["value"] == plain.best()["value"]
    assert search.best()["prompt_text"] == plain.best()["prompt_text"]
    # budget: 2 text evaluations, then 2 chains x (0 reused + 2 screened + 2), then 2 x 2
    evaluations = sum(max(r["evaluations"] for r in rows if r["trial_id"] == t) for t in {r["trial_id"] for r in rows})
    assert evaluations == 2 + 2 * 4 + 2 * 2
    assert sum(r.get("reused", False) for r in rows) == 4


def test_a_mentor_with_a_better_text_gets_it_into_the_next_generation(tmp_path):
    search = chains(tmp_path, Scripted(["1. good good", "2. junk"]))
    rows = drive(search)
    adopted = [r for r in rows if str(r.get("start", "")).startswith("candidate")]
    # the best chain (0.55) screens "good good" (1.0) and takes it; the worst chain (0.05) takes "junk" (0.5):
    # each candidate won against the chain it was screened by, not against the search
    assert [(r["start_text"], r["config"]["generation"]) for r in adopted] == [("good good", 1), ("junk", 1)]
    assert search.records[1]["adopted"] == ["good good", "junk"]
    assert search.best()["value"] == 1.0 and search.best()["generation"] >= 1
    # the next generation continues the adopting chain from its vectors
    gen2 = [r for r in rows if r["config"]["generation"] == 2 and r["step"] == 0]
    assert any(r["val_acc"] == 1.0 and r["reused"] for r in gen2)


def test_the_perturb_control_asks_no_llm_and_screens_as_many_candidates(tmp_path):
    llm = Scripted(["1. good good"])
    search = chains(tmp_path, llm, proposals="perturb")
    rows = drive(search)
    assert llm.usage.get("calls", 0) == 0
    screened = [r for r in rows if r.get("screen")] + [r for r in rows if str(r.get("start", "")).startswith("cand")]
    assert len(screened) == 4  # 2 chains x 2
    assert search.records[1]["llm"]["screen_filled"] == [] and len(search.records[1]["llm"]["screened"]) == 4


def test_schedule_is_checked():
    llm = Scripted([])
    with pytest.raises(ValueError, match="schedule"):
        LLMSearch(llm, "t", ["a"], population=2, schedule=[{"steps": -1}])
    with pytest.raises(ValueError, match="schedule"):
        LLMSearch(llm, "t", ["a"], population=2, schedule=[{"stpes": 1}])
    with pytest.raises(ValueError, match="generations"):
        LLMSearch(llm, "t", ["a"], population=2, generations=2, schedule=[{}, {}, {}])
    assert LLMSearch(llm, "t", ["a"], population=2, schedule=[{}, {}, {}]).generations == 3
    with pytest.raises(ValueError, match="proposals"):
        LLMSearch(llm, "t", ["a"], proposals="random")


def test_match_threads_outside_ray_starts_no_ray_session():
    ray = pytest.importorskip("ray")
    from trainables.phase import match_threads

    was = ray.is_initialized()
    threads = torch.get_num_threads()
    assert match_threads() == threads
    assert ray.is_initialized() == was


# -- the paired screening test ------------------------------------------------------------------------------

class Table(NoHead):
    """A ``PromptModel`` whose texts are rows of a table: which of 20 validation examples each text gets right
    (the vectors carry the row's number). No gradient: for the screening decision alone."""

    device = torch.device("cpu")

    def __init__(self, right: dict[str, list[int]]) -> None:
        self.texts = list(right)
        self.right = right
        self.evaluations = 0

    def identity(self) -> dict:
        return {"model": "table"}

    def init_vectors(self, text: str) -> torch.Tensor:
        return torch.full((1, 2), float(self.texts.index(text)))

    def project(self, vectors: torch.Tensor) -> str:
        return self.texts[int(round(float(vectors[0, 0])))]

    def loss(self, vectors: torch.Tensor, batch: list) -> torch.Tensor:
        return (vectors * 0.0).sum()

    def evaluate_each(self, vectors: torch.Tensor, examples: list) -> tuple[float, float, list[bool]]:
        self.evaluations += 1
        hits = set(self.right[self.project(vectors)])
        flags = [i in hits for i in range(len(examples))]
        return 1.0 - sum(flags) / len(flags), sum(flags) / len(flags), flags

    def evaluate(self, vectors: torch.Tensor, examples: list) -> tuple[float, float]:
        return self.evaluate_each(vectors, examples)[:2]


def screen_with(right: dict, config: dict) -> tuple[str, list[dict], Table]:
    model = Table(right)
    rows: list[dict] = []
    run_phase({"steps": 0, "eval_every": 1, "prompt_init": "start", **config}, model, TRAIN, VAL,
              report=lambda m, ckpt: rows.append(dict(m)))
    start = next(r for r in rows if r["step"] == 0 and not r.get("screen"))
    return start["start_text"] if start["start"] != "own" else "own", rows, model


def test_the_paired_test_wants_a_gain_on_the_disagreements_not_just_a_higher_accuracy():
    right = {"start": list(range(10)),
             "superset": list(range(14)),  # the start's 10 and 4 more: 4 gains, no loss
             "shuffled": list(range(5, 20))}  # 15 right, but 10 gains against 5 losses
    config = {"prompt_candidates": ["shuffled", "superset"]}
    assert screen_with(right, config)[0] == "shuffled"  # the highest accuracy wins the plain comparison
    # paired: 4 - 0 >= 1.96 * sqrt(4) passes; 10 - 5 < 1.96 * sqrt(15) does not (level 0.05 shared by 2)
    assert screen_with(right, {**config, "screen_test": "paired"})[0] == "superset"


def test_the_paired_test_keeps_the_chain_against_a_luck_sized_gain():
    right = {"start": list(range(10)), "lucky": list(range(12))}
    assert screen_with(right, {"prompt_candidates": ["lucky"]})[0] == "lucky"
    chosen, rows, model = screen_with(right, {"prompt_candidates": ["lucky"], "screen_test": "paired"})
    assert chosen == "own" and model.evaluations == 2  # the start and the one candidate, nothing more
    assert [r["prompt_text"] for r in rows if r.get("screen")] == ["lucky"]
    right["lucky"] = list(range(13))  # 3 - 0 >= 1.645 * sqrt(3): significant at one candidate
    assert screen_with(right, {"prompt_candidates": ["lucky"], "screen_test": "paired"})[0] == "lucky"


def test_a_reused_start_score_carries_its_per_example_results_for_the_paired_test(tmp_path):
    right = {"start": list(range(10)), "better": list(range(15))}
    model = Table(right)
    first: list[dict] = []
    run_phase({"steps": 0, "prompt_init": "start", "vector_dir": str(tmp_path), "trial_id": "a"}, model, TRAIN,
              VAL, report=lambda m, ckpt: first.append(dict(m)))
    path = first[-1]["vectors_path"]
    resumed = {"resume_from": path, "reuse_start_score": True, "prompt_candidates": ["better"],
               "screen_test": "paired", "trial_id": "b"}
    chosen, rows, model = screen_with(right, resumed)
    assert chosen == "better" and model.evaluations == 1  # the saved results stood for the start's evaluation
    # a vectors file saved without per-example results: the start is evaluated again, and counted
    saved = torch.load(path, weights_only=True)
    saved.pop("val_right")
    torch.save(saved, path)
    chosen, rows, model = screen_with(right, resumed)
    assert chosen == "better" and model.evaluations == 2 and rows[-1]["evaluations"] == 2


def test_the_paired_test_needs_per_example_results():
    with pytest.raises(ValueError, match="screen_test='paired' needs a model with evaluate_each"):
        phase({"prompt_init": "junk", "prompt_candidates": ["good good"], "screen_test": "paired"})
    with pytest.raises(ValueError, match="screen_test must be one of"):
        phase({"prompt_init": "junk", "screen_test": "t-test"})
    with pytest.raises(ValueError, match="screen_test must be 'gain' or 'paired'"):
        LLMSearch(Scripted([]), "Classify.", ["a"], population=2, screen_test="bonferroni")


# -- results as tables ------------------------------------------------------------------------------------------

def test_every_evaluation_and_generation_as_rows_csv_and_dataframe(tmp_path):
    import csv

    search = chains(tmp_path, Scripted(["good good", "junk"]))
    drive(search)
    rows = search.evaluation_rows()
    assert len(rows) == sum(len(t.evaluations) for t in search.trajectories)
    assert {r["generation"] for r in rows} == {0, 1, 2}
    assert all(set(r) >= {"trial_id", "origin", "step", "prompt_text", "val_acc", "loss", "lineage"} for r in rows)
    with open(tmp_path / "evaluations.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    assert [(w["trial_id"], int(w["step"]), float(w["val_acc"])) for w in written] == [
        (r["trial_id"], r["step"], r["val_acc"]) for r in rows]
    with open(tmp_path / "generations.csv", newline="") as f:
        generations = list(csv.DictReader(f))
    assert [int(g["generation"]) for g in generations] == [0, 1, 2]
    assert json.loads(generations[1]["starts"]) == search.records[1]["starts"]
    pd = pytest.importorskip("pandas")
    df = search.dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == len(rows)
    assert df.groupby("generation").val_acc.max().tolist() == [r["best_metric"] for r in search.records]
    assert len(search.dataframe("generations")) == 3
    with pytest.raises(ValueError, match="kind must be"):
        search.dataframe("trials")


# -- the mentor shown texts with what they score as text (issue #9, item 1) --------------------------------------


def test_a_phase_scores_its_best_projection_as_text_before_its_final_result():
    rows, out, model = phase({"prompt_init": "bad start", "project_best": True})
    projection, final = rows[-2], rows[-1]
    assert projection["screen"] and projection["projection"] and not final.get("screen")
    best = max((r for r in rows if not r.get("screen")), key=lambda r: (r["val_acc"], -r["loss"]))
    assert projection["prompt_text"] == best["prompt_text"] == out["prompt_text"]
    loss, acc = Toy().evaluate(Toy().init_vectors(best["prompt_text"]), VAL)
    assert (projection["loss"], projection["val_acc"]) == pytest.approx((loss, acc))
    # start + 2 steps + the projection: counted once, in the final result too
    assert model.evaluations == 4 and final["evaluations"] == 4 and out["evaluations"] == 4
    rows, _, model = phase({"prompt_init": "bad start"})
    assert model.evaluations == 3 and not any(r.get("projection") for r in rows)


AUTHORS_LIKE = [{"steps": 2}, {"steps": 2, "screen": 2}, {"steps": 2, "screen": 2}, {"steps": 2}]


def one_chain(tmp_path, llm: LLM, scores: str) -> LLMSearch:
    return LLMSearch(llm, "toy task", ["bad start"], metric="val_acc", mode="max", population=1, elites=1,
                     schedule=AUTHORS_LIKE, reuse_start_score=True, mentor_scores=scores, log_dir=str(tmp_path))


def test_mentor_scores_text_shows_each_text_with_its_own_score_and_never_a_vectors_score(tmp_path):
    llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq"])
    search = one_chain(tmp_path / "text", llm, "text")
    rows = drive(search)
    projections = [r for r in rows if r.get("projection")]
    # the phases before the two rounds project; the last two feed no round
    assert [r["config"]["generation"] for r in projections] == [0, 1]
    assert all(r["config"].get("project_best") for r in rows if r["config"]["generation"] < 2)
    assert not any(r["config"].get("project_best") for r in rows if r["config"]["generation"] >= 2)
    second = llm.prompts[1]
    vector_rows = [r for r in rows if not r.get("screen") and r["step"] > 0]
    for r in projections + [r for r in rows if r.get("screen") and not r.get("projection")
                            and r["config"]["generation"] == 1]:
        assert f"\"{r['prompt_text']}\" loss {r['loss']:.3f}, val_acc {r['val_acc']:.3f}" in second
    for r in vector_rows:  # the vectors' own scores are never shown next to their projection
        assert f"loss {r['loss']:.3f}, val_acc {r['val_acc']:.3f}" not in second
    assert "\"bad start\"" in second and "step " not in second
    # the projections are evaluations: 2 more than the same search shown vector scores
    plain_llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq"])
    plain = one_chain(tmp_path / "vectors", plain_llm, "vectors")
    plain_rows = drive(plain)

    def spent(rs):
        return sum(max(r["evaluations"] for r in rs if r["trial_id"] == t) for t in {r["trial_id"] for r in rs})

    assert spent(rows) == spent(plain_rows) + 2
    assert any(f"loss {r['loss']:.3f}, val_acc {r['val_acc']:.3f}" in plain_llm.prompts[1]
               for r in plain_rows if not r.get("screen") and r["step"] > 0)
    with pytest.raises(ValueError, match="mentor_scores"):
        one_chain(tmp_path, llm, "both")


# -- presets: named designs at the budget of gradient chains ------------------------------------------------------


class ToyEach(Toy):
    """The toy with per-example results (the first ``acc * n`` examples right), for the paired test."""

    def evaluate_each(self, vectors: torch.Tensor, examples: list) -> tuple[float, float, list[bool]]:
        loss, acc = self.evaluate(vectors, examples)
        k = round(acc * len(examples))
        return loss, acc, [i < k for i in range(len(examples))]


@pytest.mark.parametrize("name", ["chains-paired", "chains-screened", "late-mix", "authors", "authors-faithful", "authors-paired",
                                  "text-first", "halving", "descent-shown", "restarts"])
def test_every_preset_spends_the_budget_of_gradient_chains(tmp_path, name):
    from ray_llm_search import presets

    base = {"steps": 2, "eval_every": 1}
    want = presets.budget(population=2, generations=3, steps=2, eval_every=1)
    llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq", "xx yy", "yy zz"])
    if name == "descent-shown":  # its last two generations cannot evaluate the 6 times left at this budget (it
        # spends the comparison's exactly: test_descent_shown_shows_the_mentor_the_seed_chains_then_...)
        with pytest.raises(ValueError, match="cannot spend this budget exactly"):
            LLMSearch.from_preset(llm, "toy task", ["bad start", "junk words"], name, steps=2, eval_every=1,
                                  population=2, generations=3, metric="val_acc", mode="max", log_dir=str(tmp_path))
        return
    search = LLMSearch.from_preset(llm, "toy task", ["bad start", "junk words"], name, steps=2, eval_every=1,
                                   population=2, generations=3, metric="val_acc", mode="max",
                                   log_dir=str(tmp_path))
    assert search.preset == name
    rows = drive(search, base=base, model=ToyEach)
    trials = {r["trial_id"] for r in rows}
    steps = sum(max(r["step"] for r in rows if r["trial_id"] == t) for t in trials)
    evaluations = sum(max(r["evaluations"] for r in rows if r["trial_id"] == t) for t in trials)
    assert (steps, evaluations) == (want["gradient_steps"], want["evaluations"]) == (12, 18)
    assert len(trials) == search.total_trials
    if name.startswith("authors") or name == "text-first":
        assert {r["config"]["prompt_init"] for r in rows if r["config"]["generation"] == 0} == {"bad start"}


def test_text_first_screens_text_against_text_then_descends_once_from_the_best(tmp_path):
    """The rounds take no step: each candidate is scored as text against the best text so far (never against
    descended vectors), the mentor is shown texts with their own scores, and one chain then spends every step."""
    from ray_llm_search import presets

    llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq", "xx yy", "yy zz"])
    search = LLMSearch.from_preset(llm, "toy task", ["bad start", "junk words"], "text-first", steps=2,
                                   eval_every=1, population=2, generations=3, metric="val_acc", mode="max",
                                   log_dir=str(tmp_path))
    rows = drive(search, base={"steps": 2, "eval_every": 1}, model=ToyEach)
    schedule = presets.text_first_schedule(2, 3, 2, 1)
    assert [g["steps"] for g in schedule] == [0, 0, 0, 0, 12] and sum(g.get("screen", 0) for g in schedule) == 5
    by_gen = {g: [r for r in rows if r["config"]["generation"] == g] for g in range(5)}
    for g in range(4):  # no gradient step before the descent, and no projection scored (a start is its own text)
        assert max(r["step"] for r in by_gen[g]) == 0
        assert not any(r.get("projection") for r in by_gen[g])
    assert max(r["step"] for r in by_gen[4]) == 12
    # the mentor saw texts with their scores as text, never a step of descent
    assert all("step " not in p for p in llm.prompts) and "\"bad start\"" in llm.prompts[0]
    assert len(llm.prompts) == 3


def test_preset_names_and_numbers_are_checked():
    from ray_llm_search import presets

    with pytest.raises(ValueError, match="preset must be one of"):
        presets.preset("best", steps=8, eval_every=4)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        presets.preset("chains-paired", steps=8, eval_every=3)
    with pytest.raises(ValueError, match="authors' arm needs"):
        presets.preset("authors", population=1, generations=1, steps=8, eval_every=4)
    # rounds share what the budget leaves, the earlier ones one more: the quickstart's budget
    uneven = presets.authors_schedule(population=4, generations=3, steps=12, eval_every=4)
    assert [g.get("screen") for g in uneven] == [None, 7, 6, 6, None]
    assert 2 + sum(g["screen"] + 1 for g in uneven[1:4]) + uneven[4]["steps"] // 4 == 48 == presets.budget(
        4, 3, 12, 4)["evaluations"]
    kw = presets.preset(steps=8, eval_every=4)
    assert presets.DEFAULT == "authors-paired" and kw["population"] == kw["elites"] == 1 and kw["seed_prompts"] == 1
    assert kw["screen_test"] == "paired" and kw["select"] == "loss" and kw["overlap"] is True
    paired = presets.preset("chains-paired", steps=8, eval_every=4)
    assert paired["screen_test"] == "paired" and paired["elites"] == 4


def test_halving_descends_the_llm_starts_then_keeps_the_best_lineages(tmp_path):
    """Generation 0 scores the seeds as text; one round gives P new starts and S texts the best seed screens; the
    P + 1 chains descend, then only the best 2 lineages go on (from their own vectors), then the best one; the
    mentor is asked once, shown the seeds' text scores, and told the prompt's length."""
    from ray_llm_search import presets

    llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq", "xx yy", "yy zz"])
    search = LLMSearch.from_preset(llm, "toy task", ["bad start", "junk words"], "halving", steps=2, eval_every=1,
                                   population=2, generations=3, metric="val_acc", mode="max", log_dir=str(tmp_path),
                                   prompt_tokens=8)
    rows = drive(search, base={"steps": 2, "eval_every": 1}, model=ToyEach)
    schedule = presets.halving_schedule(2, 3, 2, 1)
    assert [(g.get("population"), g.get("elites"), g["steps"]) for g in schedule] == [
        (None, None, 0), (3, 1, 2), (2, 2, 1), (1, 1, 4)]
    trials = {g: sorted({r["trial_id"] for r in rows if r["config"]["generation"] == g}) for g in range(4)}
    assert [len(trials[g]) for g in range(4)] == [2, 3, 2, 1] and search.total_trials == 8
    assert len(llm.prompts) == 1 and "\"bad start\"" in llm.prompts[0] and "keeps exactly 8 tokens" in llm.prompts[0]
    first = {r["config"]["origin"] for r in rows if r["config"]["generation"] == 1}
    assert first == {"elite", "llm"}
    # the best seed screened the texts past the new starts, as text, before its first step
    assert sum(bool(r.get("screen")) for r in rows if r["config"]["generation"] == 1) + sum(
        str(r.get("start") or "").startswith("candidate") for r in rows if r["config"]["generation"] == 1) == 2
    # generation 2 continues exactly the 2 best lineages of generation 1 from their vectors, generation 3 the best
    def best(t):
        return max((r["val_acc"], -r["loss"]) for r in rows if r["trial_id"] == t and not r.get("screen"))

    ranked = sorted(trials[1], key=best, reverse=True)
    g2 = [r for r in rows if r["config"]["generation"] == 2]
    assert all(r["config"]["origin"] == "elite" and r["config"]["resume_from"] for r in g2)
    lineage = {t.trial_id: t.lineage for t in search.trajectories}
    assert {lineage[r["trial_id"]] for r in g2} == {lineage[t] for t in ranked[:2]}
    g3 = {lineage[r["trial_id"]] for r in rows if r["config"]["generation"] == 3}
    assert len(g3) == 1 and g3 <= {lineage[r["trial_id"]] for r in g2}


def test_descent_shown_shows_the_mentor_the_seed_chains_then_descends_its_starts_as_far(tmp_path):
    """Design (b) of issue #26: the seed chains descend K steps; one round is shown each seed's score as text, the
    score its chain reached after K steps and the chain's nearest words; its P starts descend K steps (no chain
    goes on meanwhile); the best 2 of all 2P lineages go on from their own vectors, then the best one. At the
    comparison's budget (4 chains, 3 generations of 8 steps, evaluated every 4) it spends exactly 96 steps and 36
    evaluations."""
    from ray_llm_search import presets

    llm = Scripted(["junk", "xq zz", "qq qq", "zz xq", "qq xq", "xx yy", "yy zz", "zz zz"])
    seeds = ["bad start", "junk words", "xx yy qq", "zz qq"]
    search = LLMSearch.from_preset(llm, "toy task", seeds, "descent-shown", steps=8, eval_every=4, population=4,
                                   generations=3, metric="val_acc", mode="max", log_dir=str(tmp_path))
    assert search.mentor_scores == "descent"
    rows = drive(search, base={"steps": 8, "eval_every": 4}, model=ToyEach)
    trials = {g: sorted({r["trial_id"] for r in rows if r["config"]["generation"] == g}) for g in range(5)}
    assert [len(trials[g]) for g in range(5)] == [4, 4, 4, 2, 1] and search.total_trials == 15
    steps = sum(max(r["step"] for r in rows if r["trial_id"] == t) for g in trials.values() for t in g)
    evaluations = sum(max(r["evaluations"] for r in rows if r["trial_id"] == t) for g in trials.values() for t in g)
    assert (steps, evaluations) == (96, 36) == tuple(presets.budget(4, 3, 8, 4)[k] for k in ("gradient_steps",
                                                                                               "evaluations"))
    # one round, after the seed chains descended: each seed as written and where its chain ended after 8 steps
    assert len(llm.prompts) == 1
    shown = [line for line in llm.prompts[0].splitlines() if line.startswith('"')]
    assert len(shown) == 4 and all("after 8 steps of descent" in line for line in shown)
    assert {line.split('"')[1] for line in shown} == set(seeds)
    lineage = {t.trial_id: t.lineage for t in search.trajectories}
    assert all(r["config"]["origin"] == "elite" for r in rows if r["config"]["generation"] == 1)
    g2 = [r for r in rows if r["config"]["generation"] == 2]
    assert {r["config"]["origin"] for r in g2} == {"llm"} and not any(r["config"]["resume_from"] for r in g2)
    assert max(r["step"] for r in g2) == 8
    assert [(g.get("population"), g.get("elites"), g["steps"], g.get("eval_every")) for g in search.schedule] == [
        (None, None, 0, None), (4, 4, 8, 4), (4, 0, 8, 4), (2, 2, 8, 2), (1, 1, 16, 4)]
    # generation 3 goes on from the best 2 lineages of all 8 (each descended 8 steps), generation 4 the best one
    def best(t):
        return max((r["val_acc"], -r["loss"]) for r in rows if r["trial_id"] == t)

    ranked = sorted(trials[1] + trials[2], key=best, reverse=True)
    g3 = {lineage[t] for t in trials[3]}
    assert g3 == {lineage[t] for t in ranked[:2]}
    assert {lineage[t] for t in trials[4]} <= g3
    # examples/lineage_origin.py reads the same from the search's evaluations.csv
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lineage_origin", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "lineage_origin.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    by_id = {t.trial_id: t for t in search.trajectories}
    root = by_id[lineage[trials[4][0]]]
    assert tool.final_origin(str(tmp_path / "evaluations.csv")) == (root.origin, root.prompt_init)
    # the no-LLM twin: the same allocation, word edits of the best-descending seeds, no round asked
    twin = LLMSearch.from_preset(Scripted([]), "toy task", seeds, "descent-shown", steps=8, eval_every=4,
                                 population=4, generations=3, metric="val_acc", mode="max",
                                 log_dir=str(tmp_path / "twin"), proposals="perturb")
    twin_rows = drive(twin, base={"steps": 8, "eval_every": 4}, model=ToyEach)
    assert twin.llm.prompts == [] and len({r["trial_id"] for r in twin_rows}) == 15
    assert {r["config"]["origin"] for r in twin_rows if r["config"]["generation"] == 2} == {"llm"}


def test_schedule_population_and_elites_narrow_a_generation(tmp_path):
    """Per-generation population and elites: a generation of 1 keeps the single best lineage, without a round."""
    llm = Scripted(["aa bb", "cc dd", "ee ff"])
    search = LLMSearch(llm, "toy task", ["bad start", "junk words", "xx yy"], metric="val_acc", mode="max",
                       population=3, elites=1, log_dir=str(tmp_path),
                       schedule=[{"steps": 1}, {"steps": 1, "population": 1, "elites": 1}])
    rows = drive(search, base={"steps": 1, "eval_every": 1}, model=ToyEach)
    assert search.total_trials == 4 and len({r["trial_id"] for r in rows}) == 4
    assert llm.prompts == []  # nothing new to start: no LLM round
    last = [r for r in rows if r["config"]["generation"] == 1]
    assert {r["config"]["origin"] for r in last} == {"elite"}
