"""The rounds' share of a finished search's wall, from its files alone (``timeline.round_wait``): for runs made
before the quickstart printed it, or by another script.

    python examples/round_share.py ~/ray_results/quickstart_2026-...     # an experiment folder of the quickstart

Reads each trial's last result (``*/result.json``), the rounds' start and length (``generations.jsonl``; a
record without ``started`` takes the end of the round's last journaled ask in ``llm_rounds.jsonl`` less its
seconds) and Tune's start and wall (``quickstart_summary.json``: the first phase's start less ``lead_in_s``).
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def last_results(folder: str) -> list[dict]:
    out = []
    for path in glob.glob(os.path.join(folder, "*", "result.json")):
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def rounds(folder: str) -> list[tuple[float, float]]:
    ends: dict[int, float] = {}
    journal = os.path.join(folder, "llm_rounds.jsonl")
    if os.path.exists(journal):
        for line in open(journal):
            entry = json.loads(line)
            ends[entry["generation"]] = max(ends.get(entry["generation"], 0.0), entry["time"])
    spans = []
    for line in open(os.path.join(folder, "generations.jsonl")):
        llm = json.loads(line).get("llm") or {}
        seconds = llm.get("seconds")
        if not isinstance(seconds, (int, float)):
            continue
        start = llm.get("started") or ends.get(json.loads(line)["generation"], 0.0) - seconds
        spans.append((start, start + seconds))
    return spans


def main(folder: str) -> dict:
    from ray_llm_search.timeline import round_wait

    summary = json.load(open(os.path.join(folder, "quickstart_summary.json")))
    results = last_results(folder)
    tune_started = min(r["started_at"] for r in results) - summary["timeline"]["lead_in_s"]
    out = round_wait(results, rounds(folder), tune_started, summary["tune_wall_s"])
    print(f"{folder}: waited for rounds {out['wait_s']}s = {100 * out['share']:.1f}% of Tune's wall "
          f"{summary['tune_wall_s']}s (rounds {out['rounds_s']}s); test acc {summary['best_test_acc']}")
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        main(folder)
