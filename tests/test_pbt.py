"""The comparison's ``pbt`` arm: Tune's own PopulationBasedTraining over P chains of the text trainable, on a tiny
real Tune run (MiniLM, two examples per class): an exploit happens, the exploited trial starts from the donor's
checkpointed vectors (its first evaluation is the donor's score there, its vectors the donor's), at an explored
learning rate; the run spends the budget, counted from what the trials reported, under both budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_llm_search import compare

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.mark.slow
def test_pbt_exploits_the_donors_checkpointed_vectors_at_the_workers_budget(tmp_path):
    argv = ["--datasets", "sst2", "--seeds", "3", "--generations", "3", "--population", "2", "--steps", "2",
            "--eval-every", "1", "--shots", "2", "--val-shots", "4", "--test-size", "10", "--max-length", "32",
            "--cpus", "2", "--arms", "pbt", "--budget", "workers", "--no-seed-prompt", "--out", str(tmp_path / "out"),
            "--storage", str(tmp_path / "storage"), "--data-root", str(SHARED_DATA)]
    run = compare.main(argv)["results"]["runs"][0]
    b = run["budget"]
    assert (run["arm"], b["kind"], run["trials"]) == ("pbt", "workers", 2)
    # 2 chains of G*K = 6 steps, one per worker; each evaluates its start and every step, and one more start
    # after each exploit: at synch PBT's 2 perturbations (steps 2 and 4) the worse of the 2 chains is exploited
    assert (run["gradient_steps"], run["worker_steps"]) == (12, 6) == (b["gradient_steps"], b["worker_steps"])
    assert run["exploits"] == 2 and run["n_evaluations"] == 2 * 7 + 2 <= b["evaluations"]
    rows = run["evaluations"]
    exploits = [e for e in rows if e["exploited_from"]]
    assert sorted(e["step"] for e in exploits) == [2, 4]
    from trainables.phase import load_vectors

    for e in exploits:
        donor = next(d for d in rows if d["trial_id"] == e["exploited_from"] and d["step"] == e["step"]
                     and not d["exploited_from"])
        # the donor's result at the perturbation is the one whose checkpoint PBT hands over
        assert (e["val_acc"], e["loss"]) == (donor["val_acc"], donor["loss"])
        mine = load_vectors(e["step_vectors_path"], {})["prompt"]
        assert torch.equal(mine, load_vectors(donor["step_vectors_path"], {})["prompt"])
        assert e["trial_id"] != donor["trial_id"] and e["lr"] != donor["lr"]  # PBT explored the rate
        assert e["start"] == "exploit"
    # the final prompt: the best validation accuracy (gradient only's rule), from its own vectors file
    best = compare.select_best(rows, "acc")
    assert run["select"] == "acc" and run["best_val_acc"] == best["val_acc"] and 0.0 <= run["test_acc"] <= 1.0


def test_pbt_needs_real_tune_and_more_than_one_interval(capsys):
    for argv, says in ((["--arms", "pbt", "--backend", "inline"], "needs real Tune trials: use --backend tune"),
                       (["--arms", "pbt", "--generations", "1"], "needs --generations 2 or more")):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1] and err[-1].startswith("usage") is False
    with pytest.raises(SystemExit):
        compare.parse_args(["--budget", "workers", "--arms", "authors-paired"])  # G*K = 24 steps cannot hold it
    assert "--budget workers: arm authors-paired gets 24 steps" in capsys.readouterr().err
