"""Where each run's final chain came from: the origin of the first phase of its lineage (``seed``, ``llm`` for a
new start the mentor wrote, or for a twin a word edit, ``pool`` for a fill-in when the mentor gave too few).

Reads the ``evaluations.csv`` that ``LLMSearch`` writes in its ``log_dir`` (``lineage`` column: the trial whose
vectors a phase continues); the comparison puts one per run under ``--storage``:

    python examples/lineage_origin.py /tmp/storage/llm /tmp/storage/nollm

prints, per arm, how many runs' final chain descends from each origin, and per task the runs' rows.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import re
from collections import Counter, defaultdict


def final_origin(path: str) -> tuple[str, str]:
    """``(origin, start text)`` of the lineage of the last generation's phase in one ``evaluations.csv``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no evaluations")
    first = {}
    for row in rows:  # a trial's first row carries its origin and start
        first.setdefault(row["trial_id"], row)
    last_generation = max(int(r["generation"]) for r in rows)
    final = next(r for r in rows if int(r["generation"]) == last_generation)
    root = first[final["lineage"]]
    return root["origin"], root["prompt_init"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("storage", nargs="+", help="folders holding <dataset>_<arm>_seed<N>/ runs")
    args = parser.parse_args(argv)
    by_arm: dict[str, Counter] = defaultdict(Counter)
    for root in args.storage:
        for path in sorted(glob.glob(os.path.join(root, "*_seed*", "**", "evaluations.csv"), recursive=True)):
            run = os.path.relpath(path, root).split(os.sep)[0]
            m = re.match(r"(?P<dataset>.+?)_(?P<arm>[a-z+-]+)_seed(?P<seed>\d+)$", run)
            if not m:
                continue
            origin, text = final_origin(path)
            by_arm[m["arm"]][origin] += 1
            print(f"{m['dataset']:8} seed {m['seed']}  {m['arm']:24} final lineage from {origin:5} {text!r}")
    for arm, counts in sorted(by_arm.items()):
        print(f"{arm}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + f" (of {sum(counts.values())})")
    return {arm: dict(c) for arm, c in by_arm.items()}


if __name__ == "__main__":
    main()
