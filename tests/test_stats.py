"""ray_llm_search.stats: the one t-interval of every table (scipy.stats' quantiles, not a hand-written table)."""

from __future__ import annotations

import math
import statistics

import pytest

from ray_llm_search import stats


@pytest.mark.parametrize("n,quantile", [(2, 12.706), (3, 4.303), (5, 2.776), (6, 2.571), (10, 2.262), (11, 2.228),
                                        (21, 2.086), (31, 2.042)])
def test_the_quantiles_are_students_t_at_n_minus_one_degrees_of_freedom(n, quantile):
    assert stats.t_quantile(n) == pytest.approx(quantile, abs=5e-4)


def test_other_confidences_and_the_normal_limit():
    assert stats.t_quantile(5, 0.90) == pytest.approx(2.132, abs=5e-4)
    assert stats.t_quantile(10, 0.99) == pytest.approx(3.250, abs=5e-4)
    assert stats.t_quantile(100_000) == pytest.approx(1.960, abs=5e-4)  # only in the limit is it 1.96


def test_the_interval_of_ten_seeds_uses_2_262_not_1_96():
    values = [0.01, 0.03, -0.02, 0.04, 0.00, 0.02, 0.05, -0.01, 0.03, 0.01]
    mean, half = stats.t_interval(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert half == pytest.approx(2.262 * statistics.stdev(values) / math.sqrt(10), rel=2e-4)
    assert stats.mean_ci(values) == f"{statistics.mean(values):+.3f} ± {half:.3f}"
    assert stats.mean_ci(values) != f"{statistics.mean(values):+.3f} ± {1.96 * statistics.stdev(values) / math.sqrt(10):.3f}"


def test_cells_for_no_value_one_value_and_identical_values():
    assert stats.mean_ci([]) == "-"
    assert stats.mean_ci([0.0126]) == "+0.013"
    assert stats.mean_ci([-0.5, -0.5, -0.5]) == "-0.500 ± 0.000"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="n >= 2"):
        stats.t_quantile(1)
    with pytest.raises(ValueError, match="confidence"):
        stats.t_quantile(5, 1.0)
    with pytest.raises(ValueError, match="finite"):
        stats.t_interval([0.1, math.nan])


def test_the_comparison_and_the_selection_study_print_the_same_cells():
    """One helper for both: the comparison's paired cell and the selection study's are stats.mean_ci's."""
    from ray_llm_search import compare
    from ray_llm_search.compare import selection_study as selection

    values = [0.02, -0.01, 0.04, 0.00, 0.03, 0.01, 0.05]
    assert compare.paired(values) == stats.mean_ci(values) == selection.mean_ci(values)
    assert not hasattr(compare, "_T95")


def test_examples_verdict_pairs_runs_by_task_and_seed_and_never_across_budgets(tmp_path):
    """examples/verdict.py (the verdict table of examples/RESULTS.md): a design minus gradient only and minus its
    twin, seed by seed where both ran, with the t-interval; a run at another budget kind is not paired."""
    import importlib.util
    import json
    import os

    spec = importlib.util.spec_from_file_location(
        "verdict", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "verdict.py"))
    verdict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verdict)

    def run(dataset, seed, arm, acc, kind="compute"):
        return {"dataset": dataset, "seed": seed, "arm": arm, "test_acc": acc, "budget": {"kind": kind}}

    runs = [run("sst2", s, "gradient", 0.60) for s in range(3)]
    runs += [run("sst2", s, "halving", 0.60 + 0.01 * s) for s in range(3)]
    runs += [run("sst2", s, "halving-perturb", 0.61) for s in range(2)] + [run("sst2", 2, "halving-perturb", 0.5, "workers")]
    runs += [run("trec", 0, "halving", 0.70), run("trec", 0, "gradient", 0.65)]
    # a design recorded under an earlier arm name (compare.ARM_ALIASES) pairs with its twin's name now
    runs += [run("bbc", 0, "authors-paired", 0.80), run("bbc", 0, "authors-perturb-paired", 0.78)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    table = verdict.main([f"{path}=M"]).splitlines()
    grad = next(line for line in table if "`halving`" in line and "gradient only" in line)
    twin = next(line for line in table if "`halving`" in line and "twin" in line)
    assert "+1.0 ± 2.5 (n=3)" in grad and "+5.0 (n=1)" in grad and grad.endswith("| +3.0 (2 tasks) |")
    assert "-0.5 ± 6.4 (n=2)" in twin and twin.endswith("| -0.5 (1 tasks) |")
    assert any(line.startswith("| `authors-paired` | M | its no-LLM twin |") and "+2.0 (n=1)" in line for line in table)
