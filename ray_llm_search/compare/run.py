"""One arm on one task and seed: the search (``tune.run``, or inline in this process), every evaluation the
trials reported (``Recorder``), the budget check, and the final prompt chosen by the design's rule and scored
once on test."""

from __future__ import annotations

import argparse
import math
import os
import time

from ray.tune import Callback

from ray_llm_search.compare.accounting import best_so_far, budget, check_budget, curve_budget
from ray_llm_search.compare.arms import _run_llm, canonical_arm, make_search, pbt_scheduler
from ray_llm_search.compare.tasks import _split_sizes, base_config, task_of
from ray_llm_search.pool import selection_key


def run_arm(args, dataset: str, seed: int, arm: str, storage: str, llm_factory=None) -> dict:
    """One arm on one dataset and seed: the search, the budget checks, the selected best on test."""
    from trainables.text_prompt import evaluate_prompt

    arm = canonical_arm(arm)
    task, seeds = task_of(args, dataset)
    seeds = seeds[: args.population]  # generation 0 is exactly P phases in every arm
    b = budget(args)
    name = f"{dataset}_{arm.replace('+', '_')}_seed{seed}"
    log_dir = os.path.join(storage, name, "llm_search")
    config = base_config(args, dataset, seed)
    if args.backend == "tune" and getattr(args, "warm", False):
        # the arm's trial processes boot while its LLM loads (ray_llm_search.warm, opt-in); each trial takes one CPU
        import ray

        from ray_llm_search import warm

        warm.prestart_trial_workers(min(int(ray.cluster_resources().get("CPU", 1)), args.population),
                                    keep_alive_s=120)
    search, llm = make_search(args, arm, task, seeds, seed, log_dir, config, llm_factory)
    recorder = Recorder()
    started = time.time()
    if args.backend == "inline":
        drive_inline(search, config, recorder)
    else:
        tune_run(args, arm, seed, search, config, recorder, name, storage)
    search_wall = time.time() - started
    evaluations = recorder.evaluations()
    counts = check_budget(arm, evaluations, b)

    rule = "loss" if getattr(search, "select", "metric") == "loss" else "acc"
    best = select_best(evaluations, rule)
    t = time.time()
    test = evaluate_prompt(config, vectors_path=best["path"])
    usage = dict(llm.usage) if llm is not None else {}
    return {
        "dataset": dataset, "seed": seed, "arm": arm, "llm": _run_llm(args, llm, llm_factory), "budget": b, **counts,
        "test_acc": test["acc"], "select": rule, "test_by_rule": {rule: test["acc"]}, "test_n": test["n"], "best_val_acc": best["val_acc"], "best_prompt": test["prompt_text"],
        "best_generation": best["generation"], "best_origin": best["origin"],
        "search_wall_s": round(search_wall, 1), "test_eval_s": round(time.time() - t, 1),
        "llm_calls": int(usage.get("calls", 0)),
        "llm_tokens": int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        "llm_prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "llm_completion_tokens": int(usage.get("completion_tokens", 0)),
        "llm_s": round(getattr(search, "llm_seconds", 0.0), 1),
        "curve_steps": best_so_far(evaluations, curve_budget(b), "steps"),
        "curve_evals": best_so_far(evaluations, curve_budget(b), "evals"),
        "evaluations": evaluations, "experiment": os.path.join(storage, name),
        "split_sizes": _split_sizes(config),
    }


def drive_inline(search, config: dict, recorder: Recorder, max_wait_s: float = 900.0) -> None:
    """The search without Tune: trials one after another in this process, fed to the searcher as Tune would
    (suggest, each result, completion). Same phases, seeds and results as ``tune.run`` (a phase does not depend
    on what runs beside it); used to measure many arms quickly on few cores."""
    from ray.tune.search import Searcher

    from trainables.phase import run_phase
    from trainables.text_prompt import build_classifier, dataset_for

    search.set_search_properties("val_acc", "max", config, num_samples=search.total_trials)
    data = dataset_for(config)
    count, deadline = 0, time.monotonic() + max_wait_s
    while True:
        trial_id = f"inline{count:05d}"
        suggested = search.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            return
        if suggested is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the searcher gave no trial for {max_wait_s}s after {count} trials")
            time.sleep(0.02)  # an LLM round is running
            continue
        count += 1
        deadline = time.monotonic() + max_wait_s
        cfg = {**config, **suggested, "trial_id": trial_id}
        last: dict = {}

        def report(metrics: dict, checkpoint, trial_id=trial_id, cfg=cfg, last=last) -> None:
            last.clear()
            last.update(metrics)
            search.on_trial_result(trial_id, dict(metrics))
            recorder.add(trial_id, cfg, metrics)

        run_phase(cfg, build_classifier(cfg, data), data.train, data.val, report=report)
        search.on_trial_complete(trial_id, dict(last))


class Recorder(Callback):
    """A Tune callback keeping every evaluation each trial reported (what the budget checks count)."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.add(trial.trial_id, trial.config, result)

    def add(self, trial_id: str, cfg: dict, result: dict) -> None:
        if "val_acc" not in result or "step" not in result:
            return
        # a function trainable's final result may repeat its last report: one row per (trial, step, screen)
        # (a projection evaluated as text is a screen row of its own, after the phase's last step)
        # (an exploit's start, at a step the trial has evaluated itself before, is one of its own too, and so is a
        # candidate adopted mid-phase, overlap=True, at the step it won at)
        index = (-2 if result.get("projection") else int(result.get("screen_index", -1)) if result.get("screen")
                 else -3 if result.get("exploited_from") or result.get("adopted") else -1)
        key = (trial_id, int(result["step"]), index)
        self.rows[key] = {
            "trial_id": trial_id, "generation": int(cfg.get("generation", 0)),
            "origin": cfg.get("origin"), "prompt_init": cfg.get("prompt_init"),
            "phase_seed": cfg.get("phase_seed"), "resumed": bool(cfg.get("resume_from")),
            "step": int(result["step"]), "val_acc": float(result["val_acc"]),
            "loss": float(result.get("loss", math.nan)), "prompt_text": result.get("prompt_text"),
            "vectors_path": None if result.get("screen") else result.get("vectors_path"),
            "screen": bool(result.get("screen")), "reused": bool(result.get("reused")),
            "projection": bool(result.get("projection")), "evaluations": result.get("evaluations"), "start": result.get("start"),
            "start_text": result.get("start_text"), "step_vectors_path": result.get("step_vectors_path"),
            "loss_vectors_path": None if result.get("screen") else result.get("loss_vectors_path"),
            "exploited_from": result.get("exploited_from"), "lr": cfg.get("lr"),
        }

    def evaluations(self) -> list[dict]:
        return sorted(self.rows.values(), key=lambda r: (r["generation"], r["trial_id"], r["step"], not r["screen"]))


def tune_run(args, arm: str, seed: int, search, config: dict, recorder: Recorder, name: str, storage: str) -> None:
    """The arm's trials under ``tune.run``: at most ``P`` at once under the workers budget; the PBT arm with
    Tune's ``PopulationBasedTraining`` (``pbt_scheduler``) and no search algorithm (its chains are a grid over
    the config: ``make_search``)."""
    from ray import tune

    from trainables.text_prompt import train_text_prompt

    extra = {"max_concurrent_trials": args.population} if budget(args)["kind"] == "workers" else {}
    if arm == "pbt":
        extra.update(scheduler=pbt_scheduler(args, seed), stop={"step": config["steps"]})
    else:
        extra.update(search_alg=search)
    tune.run(train_text_prompt, name=name, storage_path=storage, config=config,
             num_samples=1 if search is None else search.total_trials, resources_per_trial={"cpu": 1},
             metric="val_acc", mode="max",
             callbacks=[recorder], verbose=args.verbose, raise_on_failed_trial=False, reuse_actors=True,
             trial_dirname_creator=lambda trial: f"phase_{trial.trial_id}", **extra)


def select_best(evaluations: list[dict], rule: str = "acc") -> dict:
    """The arm's final evaluation, with ``"path"``: the vectors file that holds it.

    ``"acc"``: highest validation accuracy, then lower loss, then earliest; a phase saves its best vectors
    whenever it improves under this same order, so the trial's ``vectors_path`` holds exactly this
    evaluation's vectors. ``"loss"``: lowest validation loss, then higher accuracy, then earliest; held in the
    trial's ``loss_vectors_path`` (``keep_lowest_loss``), or in its ``step_vectors_path`` where every step's
    vectors were kept. A screened candidate that lost (no vectors of its own) is never chosen; it scored below
    the start its phase took, which is a candidate here too."""
    if rule not in ("acc", "loss"):
        raise ValueError(f"rule must be 'acc' or 'loss', got {rule!r}")
    usable = [e for e in evaluations if not e.get("screen")]
    if rule == "loss":
        usable = [e for e in usable if math.isfinite(e["loss"])] or usable
    # LLMSearch.best()'s order (pool.selection_key), earlier meaning the earlier generation, then step
    best = min(usable, key=lambda e: selection_key(rule, e["val_acc"], e["loss"], (e["generation"], e["step"])))
    if rule == "loss":
        return {**best, "path": best.get("loss_vectors_path") or best.get("step_vectors_path")}
    # a trial that took another's checkpoint (a PBT exploit) keeps its best since then in its vectors file,
    # which may have replaced its best before: its evaluations are found in their own files (the PBT arm
    # keeps every evaluation's vectors)
    if any(e.get("exploited_from") and e["trial_id"] == best["trial_id"] for e in evaluations):
        if not best.get("step_vectors_path"):
            raise ValueError(f"trial {best['trial_id']} took another trial's checkpoint and did not keep each "
                             "evaluation's vectors (keep_all_vectors): its best cannot be found")
        return {**best, "path": best["step_vectors_path"]}
    return {**best, "path": best.get("vectors_path")}


def rescore(run: dict, rule: str, args, cache: dict | None = None) -> bool:
    """A recorded run re-scored on test under another selection rule, from its own recorded evaluations and
    the vectors it kept (``--keep-vectors``): what the run would have reported had its arm chosen by ``rule``
    (the search does not depend on the rule). The earlier score stays in ``test_by_rule``. ``cache``: test
    accuracies by vectors file that ``python -m ray_llm_search.compare.selection_study`` already computed (its
    ``selection_cache.json``), used instead of evaluating again and given what is evaluated here. False (and the run untouched) where the chosen
    evaluation's vectors were not kept."""
    from trainables.text_prompt import evaluate_prompt

    old = run.get("select", "acc")
    chosen = select_best(run["evaluations"], rule)
    path = chosen["path"]
    if cache and path in cache:
        acc, text = cache[path], chosen.get("prompt_text")
    elif path and os.path.isfile(path):
        run_args = argparse.Namespace(**{**vars(args), **run.get("args", {})})
        test = evaluate_prompt(base_config(run_args, run["dataset"], run["seed"]), vectors_path=path)
        acc, text = test["acc"], test["prompt_text"]
        if cache is not None:
            cache[path] = acc
    else:
        return False
    run.setdefault("test_by_rule", {})[old] = run["test_acc"]
    run["test_by_rule"][rule] = acc
    run.update(test_acc=acc, best_val_acc=chosen["val_acc"], best_prompt=text, best_generation=chosen["generation"],
               best_origin=chosen["origin"], select=rule, rescored=True)
    return True


def seed_prompt_test(args, dataset: str, seed: int) -> dict:
    from trainables.text_prompt import evaluate_prompt

    config = base_config(args, dataset, seed)
    out = evaluate_prompt(config, text=task_of(args, dataset)[1][0])
    return {"dataset": dataset, "seed": seed, "arm": "seed prompt", "test_acc": out["acc"], "test_n": out["n"]}
