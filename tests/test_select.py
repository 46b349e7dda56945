"""How the final prompt is chosen: ``LLMSearch(select="loss")``, the phase's lowest-loss vectors and the
comparison's rule per arm, on a toy whose highest accuracy is a lucky early evaluation while its loss keeps
falling (the winner's curse of a small validation split)."""

from __future__ import annotations

import pytest
import torch
from test_screening import TRAIN, VAL, Scripted, Toy, drive

from ray_llm_search import LLMSearch, compare
from trainables.phase import load_vectors, run_phase


class Lucky(Toy):
    """The toy, except that its second evaluation is lucky: accuracy 1.0 whatever its loss."""

    def evaluate(self, vectors: torch.Tensor, examples: list) -> tuple[float, float]:
        loss, acc = super().evaluate(vectors, examples)
        return (loss, 1.0) if self.evaluations == 2 else (loss, acc)


def lucky_phase(tmp_path, **config) -> tuple[list[dict], Lucky]:
    rows: list[dict] = []
    model = Lucky()
    run_phase({"steps": 4, "eval_every": 1, "lr": 0.1, "phase_seed": 1, "prompt_init": "bad start",
               "vector_dir": str(tmp_path), "trial_id": "p", **config}, model, TRAIN, VAL,
              report=lambda m, ckpt: rows.append(dict(m)))
    return rows, model


def test_a_phase_keeps_its_lowest_loss_vectors_beside_its_best_accuracy_ones(tmp_path):
    rows, model = lucky_phase(tmp_path, keep_lowest_loss=True)
    lucky = max(rows, key=lambda r: (r["val_acc"], -r["loss"]))
    lowest = min(rows, key=lambda r: r["loss"])
    assert lucky["step"] == 1 and lowest["step"] == 4  # the two rules disagree here
    assert {r["loss_vectors_path"] for r in rows} == {str(tmp_path / "p.loss.pt")}
    by_loss = load_vectors(rows[-1]["loss_vectors_path"], model.identity())
    by_acc = load_vectors(rows[-1]["vectors_path"], model.identity())
    assert (by_loss["step"], by_loss["loss"]) == (4, lowest["loss"])
    assert by_acc["step"] == 1
    # the file holds the vectors that scored that loss
    assert model.evaluate(by_loss["prompt"], VAL)[0] == pytest.approx(lowest["loss"])


def test_without_the_key_a_phase_keeps_no_second_file(tmp_path):
    rows, _ = lucky_phase(tmp_path)
    assert not any("loss_vectors_path" in r for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]


def searched(tmp_path, select: str) -> tuple[LLMSearch, list[dict]]:
    search = LLMSearch(Scripted(["junk", "xq zz", "qq qq", "zz xq"]), "toy task", ["bad start", "junk words"],
                       metric="val_acc", mode="max", population=2, generations=2, elites=1, select=select,
                       log_dir=str(tmp_path / select))
    return search, drive(search, base={"steps": 3, "lr": 0.1}, model=Lucky)


def test_select_loss_chooses_the_lowest_loss_of_every_phase_and_its_vectors(tmp_path):
    search, rows = searched(tmp_path, "loss")
    assert all(r["config"].get("keep_lowest_loss") for r in rows)
    phases = [r for r in rows if not r.get("screen")]
    lowest = min(phases, key=lambda r: (r["loss"], -r["val_acc"]))
    best = search.best()
    assert best["selected_by"] == "loss"
    assert (best["loss"], best["value"], best["trial_id"]) == (lowest["loss"], lowest["val_acc"], lowest["trial_id"])
    assert best["vectors_path"] == lowest["loss_vectors_path"]
    assert load_vectors(best["vectors_path"], Toy().identity())["loss"] == lowest["loss"]
    # by the metric, the same kind of search picks a lucky evaluation of higher loss instead
    metric_search, metric_rows = searched(tmp_path, "metric")
    chosen = metric_search.best()
    assert chosen["selected_by"] == "val_acc" and chosen["value"] == 1.0 and chosen["loss"] > best["loss"]
    assert not any(r["config"].get("keep_lowest_loss") for r in metric_rows)


def test_select_is_checked():
    with pytest.raises(ValueError, match="select must be one of"):
        LLMSearch(Scripted([]), "t", ["a"], metric="val_acc", mode="max", select="acc")


def test_the_comparison_chooses_by_each_arms_rule():
    rows = [{"val_acc": 0.9, "loss": 0.8, "generation": 0, "step": 1, "vectors_path": "a.pt",
             "loss_vectors_path": "a.loss.pt"},
            {"val_acc": 0.7, "loss": 0.3, "generation": 1, "step": 4, "vectors_path": "b.pt",
             "loss_vectors_path": "b.loss.pt"},
            {"val_acc": 0.95, "loss": 0.1, "generation": 1, "step": 0, "screen": True, "vectors_path": None}]
    assert compare.select_best(rows, "acc")["path"] == "a.pt"
    assert compare.select_best(rows, "loss")["path"] == "b.loss.pt"  # a losing screened candidate: never
    with pytest.raises(ValueError, match="rule must be"):
        compare.select_best(rows, "final")
    assert compare.arm_select("authors") == compare.arm_select("authors-perturb") == "loss"
    assert compare.arm_select("gradient") == compare.arm_select("chains-paired") == "acc"
