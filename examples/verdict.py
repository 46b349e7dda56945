"""The verdict table of ``examples/RESULTS.md``: each design minus gradient only and minus its no-LLM twin, per
task (mean ± 95% t-interval over the seeds both ran, n) and the mean over tasks, from recorded ``results.json``
files of ``python -m ray_llm_search.compare``.

    python examples/verdict.py examples/results/screened/results.json=SmolLM2-135M \\
        examples/results/qwen/results.json=Qwen2.5-Coder-1.5B

Runs pair by (file, dataset, seed) only: a difference is never taken across files (mentors, sessions) or budgets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from ray_llm_search.compare import CONTROLS, canonical_arm
from ray_llm_search.compare.arms import canonical_arm
from ray_llm_search.stats import t_interval

TASKS = (("sst2", "SST-2"), ("trec", "TREC"), ("ag_news", "AG News"), ("bbc", "BBC News"))
# design arm -> its no-LLM twin (compare.CONTROLS); recorded runs may name arms by their earlier names
# (compare.ARM_ALIASES), read here as their names now
TWINS = {"authors-paired": "authors-paired-perturb", "authors": "authors-perturb", "text-first": "text-first-perturb",
         "halving": "halving-perturb", "descent-shown": "descent-shown-perturb",
         "chains-paired": "chains-paired-perturb", "chains-screened": "chains-screened-perturb",
         "late-mix": "late-mix-perturb", "restarts": "restarts-perturb"}
ORDER = ("authors-paired", "descent-shown", "halving", "text-first", "authors", "chains-paired", "chains-screened",
         "late-mix", "restarts", "llm")


def differences(runs: list[dict], arm: str, other: str) -> dict[str, list[float]]:
    """Per dataset, ``arm`` minus ``other`` in test accuracy points, seed by seed where both ran at one budget kind
    (runs recorded before budgets had kinds are equal-compute runs)."""
    by = {(r["dataset"], canonical_arm(r["arm"]), r["seed"], (r.get("budget") or {}).get("kind", "compute")): r["test_acc"]
          for r in runs}
    out: dict[str, list[float]] = {}
    for (d, a, s, k), acc in sorted(by.items()):
        if a == arm and (d, other, s, k) in by:
            out.setdefault(d, []).append(100.0 * (acc - by[(d, other, s, k)]))
    return out


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.1f} (n=1)"
    mean, half = t_interval(values)
    return f"{mean:+.1f} ± {half:.1f} (n={len(values)})"


def rows(runs: list[dict], mentor: str) -> list[str]:
    arms = {canonical_arm(r["arm"]) for r in runs}
    out = []
    for arm in ORDER:
        if arm not in arms:
            continue
        for other, label in (("gradient", "gradient only"), (TWINS.get(arm), "its no-LLM twin")):
            if other is None or other not in arms:
                continue
            diffs = differences(runs, arm, other)
            if not diffs:
                continue
            means = [statistics.mean(v) for v in diffs.values()]
            out.append(f"| `{arm}` | {mentor} | {label} | " + " | ".join(cell(diffs.get(d, [])) for d, _ in TASKS)
                       + f" | {statistics.mean(means):+.1f} ({len(means)} tasks) |")
    return out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="results.json=MENTOR")
    args = parser.parse_args(argv)
    lines = ["| design | mentor | minus | " + " | ".join(name for _, name in TASKS) + " | mean over tasks |",
             "|---|---|---|" + "---|" * len(TASKS) + "---|"]
    for spec in args.files:
        path, _, mentor = spec.partition("=")
        with open(path, encoding="utf-8") as f:  # runs recorded under an arm's earlier name: under its name now
            runs = [{**r, "arm": canonical_arm(r["arm"])} for r in json.load(f)["runs"]]
        lines += rows(runs, mentor or "?")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
