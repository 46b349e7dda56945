"""How should the final prompt be chosen? Test accuracy of the prompt each selection rule picks, per arm.

Reads a ``python -m ray_llm_search.compare --keep-vectors`` results folder (every evaluation's vectors were
saved), applies each rule to every run's recorded evaluations, evaluates the chosen vectors once on test (cached
per file) and prints mean test accuracy per dataset, arm and rule, with paired differences against gradient only.

    python -m ray_llm_search.compare ... --keep-vectors --out OUT
    python -m ray_llm_search.compare.selection_study --out OUT [--rules acc loss] [--arms ...] [--seeds ...]

Rules:

- ``acc``: highest validation accuracy, ties: lower loss (how gradient only chooses in the comparison);
- ``loss``: lowest validation loss (a continuous score: less selection noise on a small validation split;
  how ``LLMSearch(select="loss")`` and the designs that use it choose);
- ``final``: the last evaluation of the chain whose best accuracy is highest (no maximum over steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

from ray_llm_search.compare.accounting import budget_kind
from ray_llm_search.compare.arms import ARMS, canonical_arm
from ray_llm_search.compare.cli import parse_args
from ray_llm_search.compare.results import load_results
from ray_llm_search.compare.run import select_best
from ray_llm_search.compare.tasks import base_config
from ray_llm_search.stats import mean_ci


def choose(evaluations: list[dict], rule: str) -> dict:
    usable = [e for e in evaluations if not e.get("screen") and e.get("step_vectors_path")]
    if rule in ("acc", "loss"):  # the comparison's own rules, in the same order
        return select_best(usable, rule)
    if rule == "final":
        best = max(usable, key=lambda e: (e["val_acc"], -e["loss"]))
        trial = [e for e in usable if e["trial_id"] == best["trial_id"]]
        return max(trial, key=lambda e: e["step"])
    raise ValueError(f"unknown rule {rule!r}")


def main(argv=None) -> dict:
    """Prints the table; returns ``{"table": {(dataset, arm, rule, seed): test accuracy}, "summary": ...}``."""
    p = argparse.ArgumentParser(prog="python -m ray_llm_search.compare.selection_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--rules", nargs="+", default=["acc", "loss"])
    p.add_argument("--arms", nargs="+", default=None, help="only these arms (gradient only is always kept)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds")
    args = p.parse_args(argv)
    args.arms = args.arms and [canonical_arm(a) for a in args.arms]  # an arm's earlier name: the arm
    table = score_rules(args)
    return {"table": table, "summary": print_table(table, args.rules)}


def score_rules(args) -> dict[tuple, float]:
    """``{(dataset, arm, rule, seed): test accuracy}`` of each rule's choice in the equal-compute runs of
    ``args.out``: the comparison's own score where it made one, else the chosen vectors evaluated on test
    (cached per vectors file in ``selection_cache.json``)."""
    from trainables.text_prompt import evaluate_prompt

    results = load_results(os.path.join(args.out, "results.json"))
    cache_path = os.path.join(args.out, "selection_cache.json")
    cache = json.load(open(cache_path)) if os.path.isfile(cache_path) else {}
    table: dict[tuple, float] = {}
    for run in results["runs"]:
        if budget_kind(run) != "compute":  # the study pairs runs of the equal-compute budget only
            continue
        if args.arms and run["arm"] not in set(args.arms) | {"gradient"}:
            continue
        if args.seeds is not None and run["seed"] not in args.seeds:
            continue
        run_args = argparse.Namespace(**{**vars(parse_args([])), **run["args"]})
        config = base_config(run_args, run["dataset"], run["seed"])
        for rule in args.rules:
            chosen = choose(run["evaluations"], rule)
            known = run.get("test_by_rule") or {run.get("select", "acc"): run["test_acc"]}
            if rule in known:  # the comparison already scored this rule's choice on test
                table[(run["dataset"], run["arm"], rule, run["seed"])] = known[rule]
                continue
            path = chosen["step_vectors_path"]
            if path not in cache:
                cache[path] = evaluate_prompt(config, vectors_path=path)["acc"]
                with open(cache_path, "w") as f:
                    json.dump(cache, f)
            table[(run["dataset"], run["arm"], rule, run["seed"])] = cache[path]
    return table


def print_table(table: dict[tuple, float], rules: list[str]) -> dict:
    """Prints mean test accuracy per dataset, arm and rule with the paired differences against gradient only
    (``stats.mean_ci``), then each arm's mean over datasets; returns the paired differences."""
    datasets = sorted({k[0] for k in table})
    arms = [a for a in ARMS if any(k[1] == a for k in table)]
    print("| dataset | arm | " + " | ".join(f"test ({r})" for r in rules) + " | " +
          " | ".join(f"minus gradient only by acc ({r})" for r in rules) + " | " +
          " | ".join(f"minus gradient only by the same rule ({r})" for r in rules) + " |")
    print("|---|---|" + "---|" * (3 * len(rules)))
    summary = {}
    for d in datasets:
        for a in arms:
            cells, diffs, same = [], [], []
            for r in rules:
                seeds = sorted(s for (dd, aa, rr, s) in table if (dd, aa, rr) == (d, a, r))
                vals = [table[(d, a, r, s)] for s in seeds]
                cells.append(f"{statistics.mean(vals):.3f}" if vals else "-")
                paired = [table[(d, a, r, s)] - table[(d, "gradient", "acc", s)] for s in seeds
                          if (d, "gradient", "acc", s) in table]
                diffs.append(mean_ci(paired))
                summary[(d, a, r)] = paired
                like = [table[(d, a, r, s)] - table[(d, "gradient", r, s)] for s in seeds
                        if (d, "gradient", r, s) in table]
                same.append(mean_ci(like))
                summary[(d, a, r, "same")] = like
            print(f"| {d} | {a} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " | " + " | ".join(same) + " |")
    for r in rules:  # the mean over datasets, each arm minus gradient only under the same rule
        for a in arms:
            means = [statistics.mean(summary[(d, a, r, "same")]) for d in datasets if summary.get((d, a, r, "same"))]
            if means and a != "gradient":
                print(f"mean over {len(means)} datasets, {a} minus gradient only, both by {r}: "
                      f"{statistics.mean(means):+.3f}")
    return summary


if __name__ == "__main__":
    main()
