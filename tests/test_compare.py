"""ray_llm_search.compare (and its examples/compare.py): the arms spend the same budget, share seeds and splits, and a tiny real run
writes the table and the plot; and the authors' LM setting (hub model names, sentence pairs, linear head)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ray_llm_search import LLMSearch
from trainables.data import shared_data_spec

ROOT = Path(__file__).parents[1]
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"
from ray_llm_search import compare, testing  # noqa: E402


def ScriptedLLM() -> testing.ScriptedLLM:
    """Answers each call with ``n`` fresh prompts, counting calls and tokens like a real LLM."""
    return testing.ScriptedLLM(words="candidate prompt", style="completion")


def _args(**kw):
    argv = ["--generations", "3", "--population", "4", "--steps", "8", "--eval-every", "4"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return compare.parse_args(argv)


# -- budget -------------------------------------------------------------------------------------------------


def test_budget_counts_steps_and_evaluations():
    b = compare.budget(_args())
    assert b["gradient_steps"] == 3 * 4 * 8 and b["evals_per_phase"] == 3 and b["evaluations"] == 3 * 4 * 3
    assert b["llm_calls"] == 2
    with pytest.raises(ValueError, match="multiple of --eval-every"):
        compare.budget(_args(steps=6))


def _reports(arm: str, b: dict, drop: int = 0) -> list[dict]:
    rows = []
    if arm.startswith("chains"):
        # generation 0 evaluates the seeds as text; generation 1 screens G - 1 candidates per chain, whose starts
        # (and every later chain's) are reused scores; each row carries the phase's running count
        rows += [{"trial_id": f"0_{t}", "generation": 0, "step": 0, "val_acc": 0.5, "loss": 1.0, "evaluations": 1}
                 for t in range(b["population"])]
        for g in range(1, b["generations"] + 1):
            for t in range(b["population"]):
                n = b["generations"] - 1 if g == 1 else 0
                tid = f"{g}_{t}"
                rows += [{"trial_id": tid, "generation": g, "step": 0, "val_acc": 0.4, "loss": 1.0, "screen": True,
                          "screen_index": i, "evaluations": n} for i in range(n)]
                rows.append({"trial_id": tid, "generation": g, "step": 0, "val_acc": 0.5, "loss": 1.0,
                             "reused": True, "evaluations": n})
                for k, s in enumerate(range(b["eval_every"], b["steps_per_phase"] + 1, b["eval_every"]), 1):
                    rows.append({"trial_id": tid, "generation": g, "step": s, "val_acc": 0.5 + s / 100, "loss": 1.0,
                                 "evaluations": n + k})
    elif arm == "pbt":
        # P chains of G*K steps in one trial each; every K steps but the last, chain 0 takes chain 1's checkpoint
        # and evaluates it (an exploit's start row, at a step chain 0 reached itself)
        k, e = b["steps_per_phase"], b["eval_every"]
        rows += [{"trial_id": "0_0", "generation": 0, "step": s, "val_acc": 0.5, "loss": 1.0, "exploited_from": "0_1",
                  "evaluations": 2 + s // e} for s in range(k, b["generations"] * k, k)]
        for t in range(b["population"]):
            rows += [{"trial_id": f"0_{t}", "generation": 0, "step": s, "val_acc": 0.5, "loss": 1.0,
                      "evaluations": 1 + s // e} for s in range(0, b["generations"] * k + 1, e)]
    elif arm == "llm":
        for g in range(b["generations"]):
            for t in range(b["population"] * b["evals_per_phase"]):
                rows.append({"trial_id": f"{g}_{t}", "generation": g, "step": 0, "val_acc": 0.5, "loss": 1.0})
    else:
        for g in range(b["generations"]):
            for t in range(b["population"]):
                for s in range(0, b["steps_per_phase"] + 1, b["eval_every"]):
                    rows.append({"trial_id": f"{g}_{t}", "generation": g, "step": s, "val_acc": 0.5 + s / 100,
                                 "loss": 1.0})
    return rows[: len(rows) - drop]


@pytest.mark.parametrize("argv, says", [
    (["--head", "linear"], "LLM-only arm"),
    (["--head", "linear", "--arms", "gradient", "restarts"], "--no-seed-prompt"),
])
def test_linear_head_refuses_arms_that_would_score_an_untrained_head(argv, says, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)
    assert says in capsys.readouterr().err
    ok = compare.parse_args(["--head", "linear", "--arms", "gradient", "restarts", "--no-seed-prompt"])
    assert ok.arms == ["gradient", "restarts"]


def test_a_recorded_run_is_reused_only_at_the_same_budget_and_settings():
    args = compare.parse_args(["--datasets", "rte"])
    b = compare.budget(args)
    run = {"dataset": "rte", "arm": "gradient", "seed": 0, "budget": b,
           "args": {k: compare.setting(args, "rte", k) if k in compare.GLOBAL_DEFAULTS else getattr(args, k)
                    for k in compare.RESULT_ARGS}}
    compare.check_recorded(run, args, b)  # the published settings: reused
    compare.check_recorded(run, compare.parse_args(["--datasets", "rte", "--cpus", "1", "--storage", "/x"]), b)
    with pytest.raises(ValueError, match=r"rte/gradient/seed 0 with other settings \(max_length: recorded 128, asked 64\)"):
        compare.check_recorded(run, compare.parse_args(["--max-length", "64"]), b)
    with pytest.raises(ValueError, match=r"lr: recorded 0.05, asked 0.1"):
        compare.check_recorded(run, compare.parse_args(["--lr", "0.1"]), b)
    other = compare.parse_args(["--steps", "4"])
    with pytest.raises(ValueError, match="at another budget"):
        compare.check_recorded(run, other, compare.budget(other))


def test_published_settings_apply_per_dataset_unless_a_flag_is_given():
    args = compare.parse_args(["--datasets", "sst2", "trec", "rte"])
    assert [compare.base_config(args, d, 0)["max_length"] for d in ("sst2", "trec", "rte")] == [64, 64, 128]
    assert compare.base_config(args, "sst2", 0)["data"]["test_size"] == 1000
    assert compare.base_config(args, "trec", 0)["data"].get("test_size") is None
    given = compare.parse_args(["--max-length", "32", "--test-size", "50"])
    assert compare.base_config(given, "rte", 0)["max_length"] == 32
    assert compare.base_config(given, "sst2", 0)["data"]["test_size"] == 50


@pytest.mark.parametrize("arm", compare.ARMS)
def test_check_budget_accepts_exactly_the_budget(arm):
    b = compare.budget(_args())
    counts = compare.check_budget(arm, _reports(arm, b), b)
    assert counts["gradient_steps"] == (0 if arm == "llm" else b["gradient_steps"])
    if arm == "pbt":  # each chain evaluates its start once, and once after each exploit (2 here)
        assert counts["n_evaluations"] == 4 * (1 + 24 // 4) + 2 < b["evaluations"] and counts["exploits"] == 2
    else:
        assert counts["n_evaluations"] == b["evaluations"]
    with pytest.raises(AssertionError, match=re.escape(f"arm {arm}: trials reported")):
        compare.check_budget(arm, _reports(arm, b, drop=1), b)


def test_best_so_far_is_monotone_and_spans_the_budget():
    b = compare.budget(_args())
    for arm in compare.ARMS:
        rows = _reports(arm, b)
        for axis, end in (("steps", b["gradient_steps"]), ("evals", b["evaluations"])):
            curve = compare.best_so_far(rows, b, axis)
            xs, ys = zip(*curve, strict=True)
            assert list(xs) == sorted(set(xs)) and list(ys) == sorted(ys)
            assert xs[-1] == end


def test_select_best_prefers_accuracy_then_loss():
    rows = [{"val_acc": 0.5, "loss": 0.1, "generation": 0, "step": 0}, {"val_acc": 0.7, "loss": 0.9, "generation": 1,
            "step": 4}, {"val_acc": 0.7, "loss": 0.4, "generation": 2, "step": 8}]
    assert compare.select_best(rows)["generation"] == 2


# -- arm 1 shares generation 0 with arm 3 ------------------------------------------------------------------


def test_gradient_chains_start_like_llm_search_and_continue_their_own_vectors(tmp_path):
    seeds = compare.TASKS["sst2"][1]
    chains = compare.GradientChains(seeds, 4, 3, seed=7, log_dir=str(tmp_path))
    search = LLMSearch(ScriptedLLM(), "task", seeds, metric="val_acc", mode="max", population=4, generations=3,
                       seed=7, log_dir=str(tmp_path / "llm"))
    ours = [chains.suggest(f"c{i}") for i in range(4)]
    theirs = [search.suggest(f"s{i}") for i in range(4)]
    assert [(c["prompt_init"], c["phase_seed"]) for c in ours] == [(c["prompt_init"], c["phase_seed"]) for c in theirs]
    assert chains.suggest("early") is None  # generation 1 waits for generation 0
    for i in range(4):
        for step, acc in ((0, 0.5), (4, 0.6 + i / 100), (8, 0.55)):
            chains.on_trial_result(f"c{i}", {"val_acc": acc, "loss": 1.0, "step": step, "prompt_text": f"p{i} {step}",
                                             "vectors_path": f"/v/c{i}.pt"})
        chains.on_trial_complete(f"c{i}")
    chains.save(str(tmp_path / "chains.pkl"))  # what Tune checkpoints; a restored copy continues the same way
    restored = compare.GradientChains(seeds, 4, 3, seed=0, log_dir=str(tmp_path / "other"))
    restored.restore(str(tmp_path / "chains.pkl"))
    nxt = [chains.suggest(f"d{i}") for i in range(4)]
    assert [restored.suggest(f"d{i}") for i in range(4)] == nxt
    assert [c["resume_from"] for c in nxt] == [f"/v/c{i}.pt" for i in range(4)]
    assert [c["prompt_init"] for c in nxt] == [f"p{i} 4" for i in range(4)]  # each chain's best, not the last
    assert all(c["generation"] == 1 and c["origin"] == "chain" for c in nxt)
    assert chains.total_trials == 12


# -- the authors' LM setting -----------------------------------------------------------------------------------


def test_hub_model_name_passes_through_to_transformers(monkeypatch):
    import torch
    import transformers

    from trainables import text_prompt

    asked = []

    def offline(name, *a, **kw):
        asked.append(name)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(ValueError, match=r"cannot load model 'roberta-large'.*a hub name needs the Hugging Face Hub"):
        text_prompt.load_backbone("roberta-large", torch.device("cpu"))
    assert asked == ["roberta-large"]


def test_roberta_large_offline_is_a_clear_value_error():
    code = ("from trainables.text_prompt import build_classifier\n"
            "try:\n"
            "    build_classifier({'model': 'roberta-large', 'head': 'linear', 'device': 'cpu',\n"
            f"                      'data': {shared_data_spec('rte', root=str(SHARED_DATA), shots=2)!r}}})\n"
            "except ValueError as e:\n"
            "    print('VALUEERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert "VALUEERROR cannot load model 'roberta-large'" in out.stdout, out.stderr[-2000:]


def test_sentence_pairs_with_a_linear_head(tmp_path, one_torch_thread):
    from trainables.phase import run_phase
    from trainables.text_prompt import build_classifier, dataset_for, evaluate_prompt

    config = {"data": shared_data_spec("rte", root=str(SHARED_DATA), shots=2, val_shots=2, test_size=8),
              "head": "linear", "prompt_init": "does the first sentence imply the second", "prompt_length": 4,
              "max_length": 64, "steps": 2, "eval_every": 1, "batch_size": 4, "phase_seed": 0, "device": "cpu",
              "vector_dir": str(tmp_path), "trial_id": "pair"}
    data = dataset_for(config)
    model = build_classifier(config, data)
    enc = model._tokenize(data.train[:2], 60)
    sep = model.tokenizer.sep_token_id
    assert all(int((row == sep).sum()) == 2 for row in enc["input_ids"])  # premise [SEP] hypothesis [SEP]
    assert int(enc["token_type_ids"].sum()) > 0
    reports = []
    best = run_phase(config, model, data.train, data.val, report=lambda m, c: reports.append(m))
    assert [r["step"] for r in reports] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) for r in reports)
    again = evaluate_prompt(config, vectors_path=best["vectors_path"], split="val")
    assert again["acc"] == best["val_acc"]  # the linear head travels with the vectors


# -- a tiny real run: Ray Tune, MiniLM, three arms -------------------------------------------------------------


# The authors' regime needs a longer budget than the tiny run's (its own test below).
# the one-chain designs (the authors' regime, text-first) have tests of their own; their budgets are also checked
# by every run (compare.check_budget) and by test_screening's test of every preset
# (PBT has its own tiny run: tests/test_pbt.py)
TINY_ARMS = [a for a in compare.ARMS if not a.startswith(("authors", "text-first", "halving", "descent")) and a != "pbt"]


def test_authors_schedule_spends_the_gradient_arms_budget_or_says_why_not():
    args = _args()
    schedule = compare.authors_schedule(args)
    b = compare.budget(args)
    assert [g["steps"] for g in schedule] == [8, 8, 8, 8, 64] and sum(g["steps"] for g in schedule) == b["gradient_steps"]
    # generation 0: start + end; each round: S screened + 1 (start reused); the long descent: 64 / 4
    evaluations = 2 + sum(g.get("screen", 0) + 1 for g in schedule[1:4]) + 64 // 4
    assert evaluations == b["evaluations"] and all(g["screen"] == 5 for g in schedule[1:4])
    faithful = compare.authors_schedule(args, faithful=True)
    assert [g["steps"] for g in faithful] == [8, 8, 8, 8, 64] and all(g["screen"] == 4 for g in faithful[1:4])
    with pytest.raises(ValueError, match="authors' arm needs"):
        compare.authors_schedule(compare.parse_args(["--generations", "2", "--population", "2", "--steps", "2",
                                                     "--eval-every", "2"]))


@pytest.mark.slow
def test_descent_shown_and_its_twin_spend_the_budget_with_the_real_trainable(tmp_path):
    """Design (b) of issue #26 through the comparison: 2 seeds as text, 2 seed chains, 2 new starts, the best 2
    lineages, the best one; the budget checked from the trials (``check_budget`` raises otherwise); one LLM call,
    none for the twin."""
    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "3", "--population", "2", "--steps", "4",
            "--eval-every", "2", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
            "--backend", "inline", "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "storage"),
            "--data-root", str(SHARED_DATA), "--no-seed-prompt", "--arms", "descent-shown", "descent-shown-perturb"]
    result = compare.main(argv, llm_factory=lambda args, seed: ScriptedLLM())
    runs = {r["arm"]: r for r in result["results"]["runs"]}
    for arm in ("descent-shown", "descent-shown-perturb"):
        run = runs[arm]
        assert (run["trials"], run["gradient_steps"], run["n_evaluations"]) == (9, 24, 18)
        assert [len({e["trial_id"] for e in run["evaluations"] if e["generation"] == g}) for g in range(5)] == [
            2, 2, 2, 2, 1]
        assert run["select"] == "loss" and run["llm"] == ("ScriptedLLM" if arm == "descent-shown" else None)
    assert runs["descent-shown"]["llm_calls"] == 1 and runs["descent-shown-perturb"]["llm_calls"] == 0


@pytest.mark.slow
def test_authors_regime_runs_one_chain_at_the_same_budget(tmp_path, monkeypatch):
    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "3", "--population", "2", "--steps", "2",
            "--eval-every", "1", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
            "--backend", "inline", "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "storage"),
            "--data-root", str(SHARED_DATA), "--no-seed-prompt", "--arms", "gradient", "authors", "authors-perturb",
            "authors-faithful", "text-first", "text-first-perturb", "halving", "halving-perturb"]
    result = compare.main(argv, llm_factory=lambda args, seed: ScriptedLLM())
    runs = {r["arm"]: r for r in result["results"]["runs"]}
    b = runs["gradient"]["budget"]
    for arm in ("text-first", "text-first-perturb"):  # 3 rounds on text, then one descent with every step
        run = runs[arm]
        assert (run["trials"], run["gradient_steps"], run["n_evaluations"]) == (5, 12, 18)
        assert run["screened"] == 18 - 1 - 12  # what the descent's 12 evaluations and the seed's one leave
        assert {e["generation"] for e in run["evaluations"] if e["step"] > 0} == {4}
        assert run["llm"] == ("ScriptedLLM" if arm == "text-first" else None)
    assert runs["text-first"]["llm_calls"] == 3 and runs["text-first-perturb"]["llm_calls"] == 0
    for arm in ("halving", "halving-perturb"):  # 2 seeds as text, 3 lineages, the best 2, the best one
        run = runs[arm]
        assert (run["trials"], run["gradient_steps"], run["n_evaluations"]) == (8, 12, 18)
        assert [len({e["trial_id"] for e in run["evaluations"] if e["generation"] == g}) for g in range(4)] == [2, 3, 2, 1]
        assert run["select"] == "loss" and run["llm"] == ("ScriptedLLM" if arm == "halving" else None)
    assert runs["halving"]["llm_calls"] == 1 and runs["halving-perturb"]["llm_calls"] == 0
    for arm in ("authors", "authors-perturb"):
        run = runs[arm]
        assert run["trials"] == 5 and run["gradient_steps"] == b["gradient_steps"] == 12
        assert run["n_evaluations"] == b["evaluations"] == 18
        # 3 rounds screen 3 candidates each; every later phase starts from its reused score or a winner
        assert run["screened"] == 3 * 3
        starts = [e for e in run["evaluations"] if e["generation"] > 0 and e["step"] == 0 and not e["screen"]]
        assert len(starts) == 4 and all(e["reused"] or str(e["start"]).startswith("candidate") for e in starts)
        assert {e["prompt_init"] for e in run["evaluations"] if e["generation"] == 0} == {compare.TASKS["sst2"][1][0]}
    assert runs["authors"]["llm_calls"] == 3 and runs["authors-perturb"]["llm_calls"] == 0
    # the authors' design chooses its final prompt by the lowest validation loss, gradient only by accuracy
    from trainables.text_prompt import evaluate_prompt

    config = compare.base_config(compare.parse_args(argv), "sst2", 3)
    for arm in ("authors", "authors-perturb"):
        run = runs[arm]
        lowest = min((e for e in run["evaluations"] if not e["screen"]), key=lambda e: (e["loss"], -e["val_acc"]))
        assert run["select"] == "loss" and run["best_val_acc"] == lowest["val_acc"]
        assert evaluate_prompt(config, vectors_path=lowest["loss_vectors_path"])["acc"] == run["test_acc"]
    assert runs["gradient"]["select"] == "acc"
    # --rescore-only: a recorded run whose arm now chooses by another rule is re-scored from its kept vectors
    # (the best-accuracy vectors file here), and nothing new runs (seed 4 is not recorded)
    monkeypatch.setattr(compare.cli, "arm_select", lambda arm: "acc")
    again = compare.main(argv + ["--rescore-only", "--seeds", "3", "4"], llm_factory=lambda args, seed: ScriptedLLM())
    rescored = {r["arm"]: r for r in again["results"]["runs"]}
    assert len(again["results"]["runs"]) == len(runs)
    for arm in ("authors", "authors-perturb"):
        run, best = rescored[arm], compare.select_best(rescored[arm]["evaluations"], "acc")
        assert run["select"] == "acc" and set(run["test_by_rule"]) == {"acc", "loss"}
        assert run["test_acc"] == evaluate_prompt(config, vectors_path=best["vectors_path"])["acc"]
    # shown text scores: the 3 phases before the rounds project their best as text, paid for by screening
    # one candidate fewer per round, so the budget is the same
    faithful = runs["authors-faithful"]
    assert faithful["n_evaluations"] == b["evaluations"] and faithful["gradient_steps"] == b["gradient_steps"]
    projections = [e for e in faithful["evaluations"] if e["projection"]]
    assert [e["generation"] for e in projections] == [0, 1, 2] and all(e["screen"] for e in projections)
    assert faithful["screened"] == 3 * 2 + 3 and faithful["llm_calls"] == 3


@pytest.mark.slow
def test_tiny_run_spends_equal_budgets_shares_seeds_and_writes_table_and_plot(tmp_path):
    out, storage = tmp_path / "out", tmp_path / "storage"
    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "2", "--population", "2", "--steps", "2",
            "--eval-every", "2", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
            "--cpus", "2", "--out", str(out), "--storage", str(storage), "--data-root", str(SHARED_DATA),
            "--arms", *TINY_ARMS, "--results-md", str(tmp_path / "RESULTS.md")]
    llms = []

    def scripted(args, seed):
        llms.append(ScriptedLLM())
        return llms[-1]

    result = compare.main(argv, llm_factory=scripted)
    runs = {r["arm"]: r for r in result["results"]["runs"]}
    assert set(runs) == set(TINY_ARMS)
    b = runs["gradient"]["budget"]
    assert b["gradient_steps"] == 2 * 2 * 2 and b["evaluations"] == 2 * 2 * 2
    # what the trials reported, counted again here from the recorded evaluations
    for arm, run in runs.items():
        last = {}
        for e in run["evaluations"]:
            last[e["trial_id"]] = max(last.get(e["trial_id"], 0), e["step"])
        assert sum(last.values()) == run["gradient_steps"] == (0 if arm == "llm" else b["gradient_steps"])
        computed = {}  # forward evaluations each trial says it computed (screens in, reused scores out)
        for e in run["evaluations"]:
            computed[e["trial_id"]] = max(computed.get(e["trial_id"], 0), e["evaluations"])
        assert sum(computed.values()) == run["n_evaluations"] == b["evaluations"]
        reused = sum(e["reused"] for e in run["evaluations"])
        screened = sum(e["screen"] for e in run["evaluations"])
        adopted = sum(str(e["start"] or "").startswith("candidate") for e in run["evaluations"])
        if arm.startswith("chains"):
            # 2 chains x 2 gradient generations start from a reused score, unless a screened candidate won
            assert reused + adopted == 2 * 2 and run["screened"] == 2
            assert len(run["evaluations"]) - reused == b["evaluations"]
        elif arm.startswith("late"):
            # generation 0 descends from the seeds; generation 1's 2 chains resume (or adopt) after screening 1 each
            assert reused + adopted == 2 and run["screened"] == 2
            assert len(run["evaluations"]) - reused == b["evaluations"]
        else:
            assert len(run["evaluations"]) == b["evaluations"] and reused == screened == 0
        want_calls = {"gradient": 0, "chains-screened-perturb": 0, "chains-screened": 1, "late-mix": 1, "late-mix-perturb": 0,
                      "restarts-perturb": 0, "chains-paired": 1, "chains-paired-perturb": 0,
                      "late-mix-text": 1}.get(arm, b["llm_calls"])
        assert run["llm_calls"] == want_calls
    # same splits, and generation 0 of the two gradient arms is the same set of phases with the same results
    assert runs["gradient"]["split_sizes"] == runs["llm"]["split_sizes"] == runs["restarts"]["split_sizes"]
    assert all(r["test_n"] == runs["gradient"]["test_n"] for r in runs.values())

    def gen0(run):
        return sorted((e["prompt_init"], e["phase_seed"], e["step"], e["val_acc"]) for e in run["evaluations"]
                      if e["generation"] == 0)

    assert gen0(runs["gradient"]) == gen0(runs["restarts"])
    assert {e["prompt_init"] for e in runs["llm"]["evaluations"] if e["generation"] == 0} == set(
        compare.TASKS["sst2"][1][:2])
    table = (out / "RESULTS_TABLE.md").read_text()
    for arm in TINY_ARMS:
        assert compare.ARM_LABELS[arm] in table
    assert table.strip() in (tmp_path / "RESULTS.md").read_text()  # --results-md: the same tables
    assert (out / "results.json").is_file()
    assert list((out / "tensorboard" / "sst2").iterdir())
    pytest.importorskip("matplotlib")
    assert (out / "curves_sst2.png").stat().st_size > 1000


def test_results_md_replaces_only_its_generated_block(tmp_path):
    runs = [{"dataset": d, "seed": s, "arm": a} for d in ("trec", "sst2") for s in (1, 0) for a in ("llm", "gradient")]
    command = compare.regenerate_command({"runs": runs}, "out", "RESULTS.md", "python -m ray_llm_search.compare")
    assert command == ("python -m ray_llm_search.compare --datasets sst2 trec --seeds 0 1 --arms gradient llm "
                       "--backend inline --jobs 2 --keep-vectors --out out --results-md RESULTS.md")
    path = tmp_path / "RESULTS.md"
    path.write_text("# Title\n\nWritten by hand.\n")
    compare.write_results_md(str(path), "| table one |\n", {"runs": runs}, command)
    first = path.read_text()
    assert first.startswith("# Title\n\n" + compare.RESULTS_BEGIN) and first.endswith("Written by hand.\n")
    assert "| table one |" in first and command in first
    path.write_text(first.replace("Written by hand.", "Written by hand, then edited."))
    compare.write_results_md(str(path), "| table two |\n", {"runs": runs}, command)
    second = path.read_text()
    assert "| table two |" in second and "| table one |" not in second
    assert second.count(compare.RESULTS_BEGIN) == second.count(compare.RESULTS_END) == 1
    assert second.startswith("# Title\n") and second.endswith("Written by hand, then edited.\n")


@pytest.mark.slow
def test_the_selection_study_scores_each_rules_choice_on_test(tmp_path, capsys):
    from ray_llm_search.compare import selection_study as selection
    from trainables.text_prompt import evaluate_prompt

    out = tmp_path / "out"
    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "2", "--population", "2", "--steps", "2",
            "--eval-every", "1", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
            "--backend", "inline", "--out", str(out), "--storage", str(tmp_path / "storage"),
            "--data-root", str(SHARED_DATA), "--keep-vectors", "--arms", "gradient", "chains-paired-perturb"]
    result = compare.main(argv, llm_factory=lambda args, seed: ScriptedLLM())
    study = selection.main(["--out", str(out), "--rules", "acc", "loss"])
    runs = {r["arm"]: r for r in result["results"]["runs"]}
    for arm, run in runs.items():
        # by accuracy: the arm's own reported choice; by loss: the lowest-loss evaluation's saved vectors
        assert study["table"][("sst2", arm, "acc", 3)] == run["test_acc"]
        lowest = min((e for e in run["evaluations"] if not e["screen"]), key=lambda e: (e["loss"], -e["val_acc"]))
        config = compare.base_config(compare.parse_args(argv), "sst2", 3)
        assert study["table"][("sst2", arm, "loss", 3)] == evaluate_prompt(
            config, vectors_path=lowest["step_vectors_path"])["acc"]
    assert study["summary"][("sst2", "gradient", "loss", "same")] == [0.0]
    # a recorded run re-scored under another rule: the same choice as the study's, the earlier score kept
    run = runs["chains-paired-perturb"]
    before = run["test_acc"]
    assert compare.rescore(run, "loss", compare.parse_args(argv))
    assert run["select"] == "loss" and run["test_acc"] == study["table"][("sst2", run["arm"], "loss", 3)]
    assert run["test_by_rule"] == {"acc": before, "loss": run["test_acc"]}
    assert "minus gradient only by the same rule" in capsys.readouterr().out


def test_merge_adds_runs_of_other_invocations_and_refuses_another_budget(tmp_path):
    b = {"gradient_steps": 96, "evaluations": 36}

    def run(dataset, seed, arm, acc, budget=b):
        return {"dataset": dataset, "seed": seed, "arm": arm, "test_acc": acc, "budget": budget}

    results = {"runs": [run("sst2", 0, "gradient", 0.7), run("sst2", 0, "halving", 0.6)],
               "seed_prompt": [{"dataset": "sst2", "seed": 0, "test_acc": 0.6}], "commands": ["first"]}
    other = tmp_path / "other.json"
    compare.save_results({"runs": [run("sst2", 0, "halving", 0.65), run("trec", 1, "halving", 0.5)],
                          "seed_prompt": [{"dataset": "sst2", "seed": 0, "test_acc": 0.6},
                                          {"dataset": "trec", "seed": 1, "test_acc": 0.4}],
                          "commands": ["first", "second"]}, str(other))
    assert compare.merge_results(results, [str(other)]) == {"added": 1, "replaced": 1}
    got = {(r["dataset"], r["seed"], r["arm"]): r["test_acc"] for r in results["runs"]}
    assert got == {("sst2", 0, "gradient"): 0.7, ("sst2", 0, "halving"): 0.65, ("trec", 1, "halving"): 0.5}
    assert len(results["seed_prompt"]) == 2 and results["commands"] == ["first", "second"]
    elsewhere = tmp_path / "elsewhere.json"
    compare.save_results({"runs": [run("sst2", 1, "gradient", 0.7, {"gradient_steps": 48, "evaluations": 18})],
                          "seed_prompt": [], "commands": []}, str(elsewhere))
    with pytest.raises(ValueError, match="another budget"):
        compare.merge_results(results, [str(elsewhere)])
    with pytest.raises(ValueError, match="no results file"):
        compare.merge_results(results, [str(tmp_path / "missing.json")])
    # a run of the workers budget is another key, never a clash with the same arm's equal-compute run
    workers = tmp_path / "workers.json"
    compare.save_results({"runs": [run("sst2", 0, "gradient", 0.69, {"kind": "workers", "gradient_steps": 96})],
                          "seed_prompt": [], "commands": []}, str(workers))
    assert compare.merge_results(results, [str(workers)]) == {"added": 1, "replaced": 0}
    assert compare.merge_results(results, [str(other)]) == {"added": 0, "replaced": 2}


# -- the workers budget: P workers, one chain's steps each ---------------------------------------------------------


def _one_chain(b: dict, steps: list[int]) -> list[dict]:
    """A one-trial-at-a-time design's reports: one phase per generation of these steps, evaluated at its end
    (and its start, in generation 0) and every 4 steps of its last."""
    rows = []
    for g, k in enumerate(steps):
        marks = [0, k] if g == 0 else list(range(4, k + 1, 4)) if g == len(steps) - 1 else [k]
        rows += [{"trial_id": f"{g}_0", "generation": g, "step": s, "val_acc": 0.5, "loss": 1.0} for s in marks]
    return rows


@pytest.mark.parametrize("arm", ["gradient", "llm", "restarts", "chains-paired", "pbt"])
def test_workers_budget_counts_the_busiest_workers_steps(arm):
    """P-chain arms (and LLM only's P*E one-evaluation trials per generation, P at a time) spend one chain's
    G*K steps and G*E evaluations per worker: what they spend at equal compute, counted per worker."""
    b = compare.budget(_args(budget="workers", arms=arm))
    assert (b["kind"], b["workers"], b["worker_steps"], b["worker_evaluations"]) == ("workers", 4, 3 * 8, 3 * 3)
    counts = compare.check_budget(arm, _reports(arm, b), b)
    assert counts["worker_steps"] == (0 if arm == "llm" else 24)
    # PBT: chain 0's start and 24 / 4 evaluations, and the starts of its 2 exploits (at most G*E)
    assert counts["worker_evaluations"] == (9 if arm != "pbt" else 1 + 24 // 4 + 2)
    assert counts["gradient_steps"] == (0 if arm == "llm" else b["gradient_steps"])  # all P workers' steps


def test_workers_budget_gives_a_one_chain_design_one_workers_steps_and_stops_one_that_overspends(tmp_path):
    args = _args(budget="workers", generations=5)
    b = compare.budget(args)
    assert compare.design_population("authors-paired-perturb", args) == 1
    assert compare.design_population("chains-paired", args) == 4
    # the authors' schedule at one worker's budget: 4 short phases and a long descent, G*K = 40 steps in all
    search, _ = compare.make_search(args, "authors-paired-perturb", "task", ["a seed"], 0, str(tmp_path), {})
    steps = [g["steps"] for g in search.schedule]
    assert steps == [8, 8, 8, 8, 8] and sum(steps) == b["worker_steps"] == 40
    rows = _one_chain(b, steps) + _screens([3, 3, 2])  # 7 evaluations of the chain, 8 screened: G*E = 15
    counts = compare.check_budget("authors-paired-perturb", rows, b)
    assert (counts["worker_steps"], counts["worker_evaluations"], counts["gradient_steps"]) == (40, 15, 40)
    # the design at the equal-compute schedule (one chain, all G*P*K = 160 steps) overspends its one worker
    compute = compare.budget(_args(generations=5))
    heavy = _one_chain(compute, [8, 8, 8, 8, 128]) + _screens([8, 8, 7])
    assert compare.check_budget("authors-paired-perturb", heavy, compute)["gradient_steps"] == 160
    with pytest.raises(AssertionError, match="160 gradient steps and 60 evaluations per worker; the budget is 40 and 15"):
        compare.check_budget("authors-paired-perturb", heavy, b)
    # P chains of which one takes an extra phase: that worker did more than one chain's steps
    extra = _reports("gradient", b) + [{"trial_id": "2_9", "generation": 2, "step": s, "val_acc": 0.5, "loss": 1.0}
                                       for s in (0, 4, 8)]
    with pytest.raises(AssertionError, match="48 gradient steps and 18 evaluations per worker; the budget is 40 and 15"):
        compare.check_budget("gradient", extra, b)


def _screens(per_round: list[int]) -> list[dict]:
    """Screened candidates that lost, ``per_round[i]`` in generation ``i + 1`` (one evaluation each)."""
    return [{"trial_id": f"{g}_0", "generation": g, "step": 0, "val_acc": 0.4, "loss": 1.0, "screen": True,
             "screen_index": i} for g, n in enumerate(per_round, 1) for i in range(n)]


def test_worker_span_schedules_generations_one_after_another():
    work = {f"{g}_{t}": {"generation": g, "steps": k, "evaluations": 1} for g, ks in enumerate([[8, 8], [16], [2, 2, 2]])
            for t, k in enumerate(ks)}
    assert compare.worker_span(work, 2) == (8 + 16 + 4, 1 + 1 + 2)
    assert compare.worker_span(work, 1) == (16 + 16 + 6, 2 + 1 + 3)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        compare.worker_span(work, 0)


@pytest.mark.slow
def test_workers_budget_end_to_end_one_chain_gets_one_workers_steps_and_tables_keep_budgets_apart(tmp_path):
    common = ["--datasets", "sst2", "--seeds", "3", "--generations", "5", "--population", "2", "--steps", "2",
              "--eval-every", "1", "--shots", "2", "--val-shots", "2", "--test-size", "10", "--max-length", "32",
              "--backend", "inline", "--out", str(tmp_path / "out"), "--storage", str(tmp_path / "storage"),
              "--data-root", str(SHARED_DATA), "--no-seed-prompt"]
    compare.main(common + ["--arms", "gradient", "authors-paired-perturb", "--budget", "workers"])
    result = compare.main(common + ["--arms", "gradient"])  # the equal-compute run beside it, not over it
    runs = {(r["arm"], compare.budget_kind(r)): r for r in result["results"]["runs"]}
    assert set(runs) == {("gradient", "workers"), ("authors-paired-perturb", "workers"), ("gradient", "compute")}
    one = runs[("authors-paired-perturb", "workers")]
    # one chain: 4 short phases and a descent, G*K = 10 steps and G*E = 15 evaluations in all, on one worker
    assert (one["trials"], one["gradient_steps"], one["worker_steps"], one["n_evaluations"]) == (5, 10, 10, 15)
    chains = runs[("gradient", "workers")]
    assert (chains["gradient_steps"], chains["worker_steps"], chains["worker_evaluations"]) == (20, 10, 15)
    assert runs[("gradient", "compute")]["gradient_steps"] == 20 and "kind" in runs[("gradient", "compute")]["budget"]
    table = result["table"]
    compute, workers = table.split("Budget: P workers")
    assert "Budget: equal compute" in compute and "| sst2 | gradient only | 1 | " in compute
    row = f"| sst2 | {compare.ARM_LABELS['authors-paired-perturb']} | 1 |"
    assert row not in compute and row in workers and "| 10 (10) | 15 (15) |" in workers  # never in one table
    with pytest.raises(ValueError, match="different budgets are never paired"):
        compare.paired_table(result["results"]["runs"])


def test_arms_are_named_by_their_presets_and_their_earlier_names_still_work(tmp_path):
    """A design's arm is its preset's name (its no-LLM twin ``<preset>-perturb``); the earlier names run the same
    arm from the command line and are read under the names now from recorded results.json files."""
    for arm, preset in compare.ARM_PRESETS.items():
        assert arm in (preset, f"{preset}-perturb") or arm == "late-mix-text"  # late-mix, candidates from text
    assert compare.SCREENED_ARMS.keys() == compare.ARM_PRESETS.keys()
    for old, new in compare.ARM_ALIASES.items():
        assert new in compare.ARMS and old not in compare.ARMS and compare.canonical_arm(old) == new
    for table in (compare.CONTROLS, compare.ABLATIONS, compare.PEERS):
        assert all(a in compare.ARMS and b in compare.ARMS for a, b in table)
    assert set(compare.ARM_LABELS) == set(compare.ARMS) and set(compare.DEFAULT_ARMS) <= set(compare.ARMS)
    args = compare.parse_args(["--arms", "screened-paired", "authors-perturb-paired", "llm+gradient", "gradient"])
    assert args.arms == ["chains-paired", "authors-paired-perturb", "restarts", "gradient"]
    assert compare.arm_select("authors-perturb-paired") == compare.arm_select("authors-paired-perturb") == "loss"
    b = compare.budget(args)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    compare.save_results({"runs": [{"dataset": "sst2", "seed": 0, "arm": "screened-perturb-paired", "budget": b,
                                    "test_acc": 0.6}], "seed_prompt": [], "commands": []}, str(old))
    compare.save_results({"runs": [{"dataset": "sst2", "seed": 0, "arm": "chains-paired-perturb", "budget": b,
                                    "test_acc": 0.7}], "seed_prompt": [], "commands": []}, str(new))
    assert [r["arm"] for r in compare.load_results(str(old))["runs"]] == ["chains-paired-perturb"]
    results = compare.load_results(str(old))
    assert compare.merge_results(results, [str(new)]) == {"added": 0, "replaced": 1}  # the same arm
    assert [(r["arm"], r["test_acc"]) for r in results["runs"]] == [("chains-paired-perturb", 0.7)]
    recorded = ROOT / "examples" / "results" / "screened" / "results.json"  # recorded under the earlier names
    if recorded.is_file():
        runs = compare.load_results(str(recorded))["runs"]
        assert {r["arm"] for r in runs} <= set(compare.ARMS) and "chains-paired" in {r["arm"] for r in runs}
        assert compare.ARM_LABELS["chains-paired"] in compare.write_table({"runs": runs}, str(tmp_path / "t.md"))
