"""``results.json``: every run of a comparison, merged across invocations; a recorded run is reused only if it
was made at the same budget and settings. Runs recorded under an arm's earlier name are read under its name now
(``arms.canonical_arm``); the files are not rewritten until a run is added."""

from __future__ import annotations

import json
import os

from ray_llm_search.compare.accounting import BUDGETS, budget_kind
from ray_llm_search.compare.arms import canonical_arm
from ray_llm_search.compare.tasks import GLOBAL_DEFAULTS, setting, user_tasks

# The arguments that change a run's result (beside the budget): a run recorded with other values is not
# the run asked for. Paths, CPU counts, the LLM's endpoint and key variable are not among them.
RESULT_ARGS = ("model", "head", "shots", "val_shots", "test_size", "max_length", "lr", "batch_size", "prompt_length",
               "max_prompt_words", "elites", "llm", "llm_model", "candidate_start", "screen_margin", "tell_length")


# What only the mentor reads: a run without an LLM (gradient only, the no-LLM twins) is the same run either way.
MENTOR_ARGS = ("llm", "llm_model", "tell_length")


NEW_ARG_DEFAULTS = {"candidate_start": "text", "screen_margin": 0, "tell_length": False}


def check_recorded(run: dict, args, b: dict) -> None:
    """A run already in results.json is reused only if it was made at this budget and with these settings."""
    where = f"results.json holds {run['dataset']}/{run['arm']}/seed {run['seed']}"
    if {"kind": "compute", **run["budget"]} != b:  # runs recorded before --budget existed: equal compute
        raise ValueError(f"{where} at another budget ({run['budget']}); use --force or another --out")
    recorded = {**NEW_ARG_DEFAULTS, **run.get("args", {})}  # runs recorded before these flags existed
    differ = {k: (recorded.get(k), setting(args, run["dataset"], k) if k in GLOBAL_DEFAULTS else getattr(args, k))
              for k in RESULT_ARGS}
    differ = {k: v for k, v in differ.items() if v[0] != v[1] and not (k in MENTOR_ARGS and run.get("llm") is None)}
    if run["dataset"] in user_tasks(args):  # the task file may have changed: other data, task, seeds
        recorded_task = (run.get("args", {}).get("user_tasks") or {}).get(run["dataset"])
        if recorded_task != user_tasks(args)[run["dataset"]]:
            differ["task"] = (recorded_task, user_tasks(args)[run["dataset"]])
    if differ:
        said = ", ".join(f"{k}: recorded {old!r}, asked {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"{where} with other settings ({said}); use --force or another --out")


def load_results(path: str) -> dict:
    """The results recorded at ``path`` (none where there is no file), each run under its arm's name now
    (``canonical_arm``: runs recorded under an earlier name pair, merge and replace like the others)."""
    if not os.path.isfile(path):
        return {"runs": [], "seed_prompt": [], "commands": []}
    with open(path) as f:
        results = json.load(f)
    for run in results.get("runs", []):
        run["arm"] = canonical_arm(run["arm"])
    return results


def merge_results(results: dict, paths: list[str]) -> dict:
    """Add the runs of other invocations' ``results.json`` files (each run keyed by task, seed, arm and budget
    kind; a run of a later file replaces the same key's), their seed-prompt rows and commands; returns counts.
    Runs of one budget kind whose numbers differ (another ``P``, ``G``, ``K`` or ``E``) are refused: they do not
    pair."""
    added = replaced = 0

    def budget_of(run: dict) -> str:
        return json.dumps({"kind": "compute", **run["budget"]}, sort_keys=True)

    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"--merge: no results file at {path!r}")
        other = load_results(path)
        for kind in BUDGETS:
            budgets = {budget_of(r) for r in results["runs"] + other["runs"] if budget_kind(r) == kind}
            if len(budgets) > 1:
                raise ValueError(f"--merge: {path} holds runs at another budget than the results it would join "
                                 f"({sorted(budgets)})")
        for run in other["runs"]:
            key = (run["dataset"], run["seed"], run["arm"], budget_kind(run))
            before = len(results["runs"])
            results["runs"] = [r for r in results["runs"]
                               if (r["dataset"], r["seed"], r["arm"], budget_kind(r)) != key]
            replaced += before - len(results["runs"])
            added += before == len(results["runs"])
            results["runs"].append(run)
        have = {(r["dataset"], r["seed"]) for r in results["seed_prompt"]}
        results["seed_prompt"] += [r for r in other.get("seed_prompt", []) if (r["dataset"], r["seed"]) not in have]
        results.setdefault("commands", []).extend(c for c in other.get("commands", [])
                                                  if c not in results["commands"])
    return {"added": added, "replaced": replaced}


def save_results(results: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
