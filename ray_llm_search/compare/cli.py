"""Does the LLM + gradient combination beat gradient descent alone, at equal budget, on your task?

    python -m ray_llm_search.compare --task-file my_task.json --seeds 0 1 2 3 4     # the default arms
    python -m ray_llm_search.compare --data reviews.csv --text-column review --label-column stars \
        --task-description "Rate a product review." --seed-prompts "this review is" "rating:" --name reviews
    python -m ray_llm_search.compare --datasets sst2 trec --seeds 0 1 2     # the shared benchmarks (presets)

A task file (JSON, or YAML when PyYAML is installed) holds ``name``, ``task`` (one or two sentences for the
LLM), ``seed_prompts`` (one or more; generation 0 starts from the first ``--population``, cycled) and ``data``
(a data spec of ``trainables.data``: ``path`` or ``train``/``val``/``test`` files, columns, ``label_names``;
relative paths are taken from the task file's folder), and may set ``max_length`` and ``test_size``. The
run seed fixes the k-shot splits (``--shots`` per class for training, ``--val-shots`` for validation).

The arms, on the same data splits (fixed by the run seed), ``G`` generations of ``P`` Tune trials unless said. A
design's arm is named after its preset (``ray_llm_search.presets``), its no-LLM twin ``<preset>-perturb``; the
earlier names (``llm+gradient``, ``perturb+gradient``, ``screened``, ``screened-perturb``, ``screened-paired``,
``screened-perturb-paired``, ``authors-perturb-paired``, ``late-text``) still run the same arms and are read
under these names from recorded ``results.json`` files:

| arm | what a trial does | gradient steps | evaluations | LLM calls |
|---|---|---|---|---|
| ``gradient`` | ``P`` chains: generation 0 starts from the seed prompts, each later phase continues its own chain from that chain's best vectors so far (no LLM) | ``G*P*K`` | ``G*P*E`` | 0 |
| ``llm`` | OPRO-style: ``P*E`` prompts per generation evaluated as text, no gradient step (``steps=0``); the LLM proposes all ``P*E`` of the next generation | 0 | ``G*P*E`` | ``G-1`` |
| ``restarts`` | ``LLMSearch``, the first design (the preset ``"restarts"``): ``P`` phases of ``K`` steps per generation; 1 elite resumes from its vectors, the LLM proposes the other ``P-1`` | ``G*P*K`` | ``G*P*E`` | ``G-1`` |
| ``restarts-perturb`` | restarts without an LLM: ``restarts`` with random word edits of the best texts instead of the LLM's | ``G*P*K`` | ``G*P*E`` | 0 |
| ``chains-screened`` / ``chains-screened-perturb`` | every chain continues; generation 0 scores the seeds as text, then each chain screens ``G-1`` LLM (perturbed) texts and starts from one only if it beats the chain | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``late-mix`` / ``late-mix-perturb`` | every chain continues; after one generation of descent each chain screens ``G-1`` warm restarts ``(chain + candidate) / 2`` | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``late-mix-text`` | as ``late-mix``, the candidates starting from their text (the plain restart the warm one is measured against) | ``G*P*K`` | ``G*P*E`` | 1 |
| ``chains-paired`` / ``chains-paired-perturb`` | as ``chains-screened``, a candidate adopted only if it passes the paired sign test (``screen_test="paired"``; the preset ``"chains-paired"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``authors`` / ``authors-perturb`` | the MaaO authors' regime and its no-LLM twin, one chain, 3 short phases each followed by an LLM round whose candidates are screened against the chain, then one long descent (``authors_schedule``) | ``G*P*K`` | ``G*P*E`` | 3 / 0 |
| ``authors-faithful`` | ``authors`` with the mentor shown texts scored as text (``mentor_scores="text"``): the phases before each round score their best vectors' projection, one candidate fewer is screened per round | ``G*P*K`` | ``G*P*E`` | 3 |
| ``halving`` / ``halving-perturb`` | generation 0 scores the ``P`` seeds as text; one LLM (perturbed) round gives ``P`` new starts and ``S`` texts the best seed screens; ``P + 1`` chains descend ``K`` steps, the best 2 go on, then the best one takes the rest (the preset ``"halving"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``descent-shown`` / ``descent-shown-perturb`` | generation 0 scores the ``P`` seeds as text; the ``P`` seed chains descend ``K`` steps; one LLM round shown what descent did to each seed (perturbed: word edits of the best-descending seeds) gives ``P`` new starts that descend ``K`` steps; the best 2 of the ``2P`` lineages go on, then the best one takes the rest (the preset ``"descent-shown"``) | ``G*P*K`` | ``G*P*E`` | 1 / 0 |
| ``authors-paired`` / ``authors-paired-perturb`` | ``LLMSearch``'s default design (``presets.DEFAULT``) and its twin: ``authors`` with candidates adopted only on the paired sign test (the preset ``"authors-paired"``) | ``G*P*K`` | ``G*P*E`` | 3 / 0 |
| ``pbt`` | the peer a Ray user would pick: Tune's ``PopulationBasedTraining`` over ``P`` chains of ``G*K`` steps (the text trainable, started like ``gradient``'s generation 0); every ``K`` steps the bottom quantile takes a top chain's vectors from its Tune checkpoint and explores the learning rate (``pbt_scheduler``); needs ``--backend tune`` | ``G*P*K`` | at most ``G*P*E``: ``P*(1 + G*K/eval_every)`` plus one per exploit | 0 |

Without ``--arms``: ``gradient``, ``authors-paired-perturb``, ``llm``, ``authors-paired`` (gradient only, restarts without
an LLM in the default design's allocation, LLM only, ``LLMSearch``'s default).

``K`` = ``--steps`` per phase, ``E = K / eval_every + 1`` evaluations per phase (a phase also evaluates its
start).

``--budget`` says what is held equal. ``compute`` (the default; the table above): every arm spends ``G*P*K``
gradient steps and ``G*P*E`` evaluations in all, so a one-chain design (the authors' regimes, ``text-first``:
one trial at a time) gets every step, and on a cluster of ``P`` workers leaves ``P-1`` of them idle. ``workers``
(equal wall-clock on ``P`` workers): every arm runs at most ``P`` trials at once (Tune's
``max_concurrent_trials``) and each worker gets one chain's ``G*K`` steps and ``G*E`` evaluations; an arm of
``P`` chains (gradient only, LLM only, the chains designs, PBT) spends what it spends at equal compute, a
one-chain design is built at the budget of one chain (``presets.preset(population=1)``): ``G*K`` steps in all
(``--generations`` must leave its rounds room: the command says so). It is counted from what the trials
reported (``worker_span``): the generations one after another, each generation's trials in creation order,
each on the worker that has done least so far; the busiest worker's steps and evaluations must be the budget's.
Every run records its budget (``"budget": {"kind": ...}``); runs of the two budgets are kept side by side in
``results.json`` and never share a table or a pair.

Generation 0 of ``gradient`` and ``restarts`` is the same set of trials (same starts, same phase
seeds), so the arms differ only in what starts the later phases: the chain's own vectors, or the LLM's
prompts plus one elite. After the search, the arm's final prompt is evaluated once on the test split: the
evaluation its design chooses (``arm_select``: the lowest validation loss for the authors' designs, which
choose so, ``select="loss"``; else the highest validation accuracy, ties: lower loss). Each arm's steps and evaluations are counted from
what its trials reported and checked against the budget; a mismatch stops the run.

    python examples/compare.py --datasets sst2 trec ag_news rte --seeds 0 1 2   # examples/RESULTS.md
    python examples/compare.py --replot                                       # table + plot from results.json

Writes to ``--out`` (default ``compare_results``; ``examples/results`` from ``examples/compare.py``):
``results.json`` (every run, merged across invocations; runs already there are skipped unless ``--force``), ``RESULTS_TABLE.md``, ``curves_<dataset>.png`` and
TensorBoard runs of best-so-far validation accuracy per arm under ``tensorboard/``; Tune's own per-trial
logs and the searcher's TensorBoard go under ``--storage``. ``--results-md FILE`` also puts the tables, with the
one command that regenerates them, between ``<!-- compare:begin -->`` and ``<!-- compare:end -->`` in ``FILE``
(``examples/RESULTS.md``'s generated section).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ray_llm_search import presets
from ray_llm_search.compare.accounting import BUDGETS, budget, budget_kind
from ray_llm_search.compare.arms import (
    ARM_ALIASES,
    ARM_PRESETS,
    ARMS,
    DEFAULT_ARMS,
    arm_select,
    canonical_arm,
    design_population,
)
from ray_llm_search.compare.report import (
    regenerate_command,
    write_plots,
    write_results_md,
    write_table,
    write_tensorboard,
)
from ray_llm_search.compare.results import check_recorded, load_results, merge_results, save_results
from ray_llm_search.compare.run import rescore, run_arm, seed_prompt_test
from ray_llm_search.compare.tasks import GLOBAL_DEFAULTS, TASKS, base_config, load_task_file, setting, task_from_flags
from ray_llm_search.flags import add_llm_flags, add_search_flags


def _check_args(p: argparse.ArgumentParser, args) -> None:
    """The tasks of ``--task-file`` and ``--data`` into ``args.user_tasks`` and ``args.datasets``; combinations
    that cannot work end the command with a message (``p.error``)."""
    args.arms = [canonical_arm(a) for a in args.arms]  # an arm's earlier name runs the arm under its name now
    try:
        tasks = [load_task_file(path) for path in args.task_file]
        flagged = task_from_flags(args)
    except ValueError as e:
        p.error(str(e))
    tasks += [flagged] if flagged else []
    args.user_tasks = {}
    for task in tasks:
        if task["name"] in args.user_tasks:
            p.error(f"two tasks are named {task['name']!r}; give each task its own name")
        args.user_tasks[task["name"]] = task
    args.datasets = list(args.datasets or ([] if tasks else ["sst2"])) + list(args.user_tasks)
    if "pbt" in args.arms and not args.replot:
        if args.backend != "tune":
            p.error("--arms pbt runs Tune's PopulationBasedTraining, which needs real Tune trials: use --backend tune "
                    "(the default), not --backend inline")
        if args.generations < 2:
            p.error(f"--arms pbt needs --generations 2 or more (PBT exploits between the {args.steps}-step intervals of "
                    f"each chain's generations x steps), got --generations {args.generations}")
    if args.budget == "workers" and not args.replot:
        for arm in args.arms:  # a one-chain design gets one worker's steps: can its schedule fit them?
            if arm in ARM_PRESETS:
                try:
                    workers = design_population(arm, args)
                    presets.preset(ARM_PRESETS[arm], population=workers, generations=args.generations,
                                   steps=args.steps, eval_every=args.eval_every)
                except ValueError as e:
                    p.error(f"--budget workers: arm {arm} gets {args.generations * args.steps} steps for each trial it "
                            f"runs at once, which its design cannot spend ({e}); raise --generations")
    if args.head == "linear" and not args.replot:
        # A linear head is trained with the prompt: evaluated without gradient steps it is its random init.
        if "llm" in args.arms:
            p.error("--head linear: the LLM-only arm evaluates prompts without gradient steps, so its linear head "
                    "would stay untrained; use --arms gradient restarts (or --head label_names)")
        if not args.no_seed_prompt:
            p.error("--head linear: the seed prompt's test row would use an untrained linear head; add "
                    "--no-seed-prompt")


def _add_task_flags(p: argparse.ArgumentParser) -> None:
    """The task: shared benchmarks, task files, or a data file with its flags."""
    p.add_argument("--datasets", nargs="+", default=None, choices=sorted(TASKS),
                   help="shared benchmarks (presets); default sst2 when no task of your own is given")
    p.add_argument("--task-file", nargs="+", default=[], help="your task(s): JSON or YAML files (see above)")
    p.add_argument("--data", default=None, help="your task's data file or folder (instead of a task file)")
    p.add_argument("--text-column", default=None, help="with --data: the text column (default 'text')")
    p.add_argument("--label-column", default=None, help="with --data: the label column (default 'label')")
    p.add_argument("--task-description", default=None, help="with --data: the task, as the LLM should read it")
    p.add_argument("--seed-prompts", nargs="+", default=None, help="with --data: the starting prompts")
    p.add_argument("--name", default=None, help="with --data: the task's name in the results (default: file name)")


def _add_arm_flags(p: argparse.ArgumentParser) -> None:
    """Seeds, arms, their budget and the search's shape."""
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="each seed fixes the splits and phases")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS + tuple(ARM_ALIASES), metavar="ARM",
                   help=f"arms to run (default: {' '.join(DEFAULT_ARMS)}): {', '.join(ARMS)}; earlier names "
                        f"still accepted: {', '.join(f'{a} = {b}' for a, b in ARM_ALIASES.items())}")
    p.add_argument("--candidate-start", default="text", choices=["text", "mix"],
                   help="screened arms: a winning candidate starts from its embedding, or mixed with the chain's")
    p.add_argument("--screen-margin", type=float, default=0,
                   help="screened arms: validation examples a candidate must gain over the chain to replace it")
    p.add_argument("--backend", default="tune", choices=["tune", "inline"],
                   help="tune: real tune.run; inline: the same trials one after another in one process (fast)")
    p.add_argument("--budget", default="compute", choices=list(BUDGETS),
                   help="compute: every arm G*P*K steps and G*P*E evaluations in all; workers: P workers, each arm at "
                        "most P trials at once and each worker one chain's G*K steps and G*E evaluations (equal "
                        "wall-clock on a cluster: a one-chain design gets G*K steps in all)")
    p.add_argument("--keep-vectors", action="store_true",
                   help="save the vectors of every evaluation (to study how the final prompt is chosen)")
    p.add_argument("--jobs", type=int, default=1, help="inline backend: runs side by side in this many processes")
    add_search_flags(p, steps=8, eval_every=4, seed=None)  # P, G, elites (of the restarts arms), K, eval every


def _add_trial_flags(p: argparse.ArgumentParser) -> None:
    """The data splits, the model and its training, the prompt and the mentor."""
    p.add_argument("--shots", type=int, default=16, help="training examples per class")
    p.add_argument("--val-shots", type=int, default=None, help="validation examples per class (default: shots)")
    p.add_argument("--test-size", type=int, default=None,
                   help="cap on test examples (default: 1000 for sst2, else the preset's: all, or 1000 for ag_news)")
    p.add_argument("--data-root", default=None, help="shared/data folder (default: beside the checkout)")
    p.add_argument("--model", default=None, help="backbone: None = all-MiniLM-L6-v2 offline; or e.g. roberta-large")
    p.add_argument("--head", default="label_names", choices=["label_names", "linear"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompt-length", type=int, default=8)
    p.add_argument("--max-length", type=int, default=None, help="tokens per input (default: 128 for rte, else 64)")
    p.add_argument("--max-prompt-words", type=int, default=12)
    p.add_argument("--tell-length", action="store_true",
                   help="tell the mentor that a prompt keeps --prompt-length tokens and ask for about that many "
                        "words (LLMSearch(prompt_tokens=...))")
    add_llm_flags(p, dtype="float32")  # the precision every recorded run's mentor had


def _add_run_flags(p: argparse.ArgumentParser, default_out: str | None = None) -> None:
    """Where and how the runs go: Ray, outputs, reruns, merging."""
    p.add_argument("--cpus", type=int, default=None, help="Ray CPUs (default: all); one per trial")
    p.add_argument("--warm", action="store_true",
                   help="tune backend: start each arm's trial processes while its LLM loads (ray_llm_search.warm, "
                        "experimental; off by default)")
    p.add_argument("--cpu", action="store_true", help="force CPU even with a GPU")
    p.add_argument("--out", default=default_out or "compare_results", help="results.json, the table, the plots")
    p.add_argument("--storage", default=os.path.expanduser("~/ray_results/compare"),
                   help="Tune's experiment folders (per-trial logs, checkpoints, the searcher's TensorBoard)")
    p.add_argument("--force", action="store_true", help="rerun runs already in results.json")
    p.add_argument("--no-seed-prompt", action="store_true", help="skip the seed prompt's test accuracy row")
    p.add_argument("--replot", action="store_true", help="only rewrite the table and plots from results.json")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="add the runs of other invocations' results.json files (e.g. runs made side by side in other "
                        "--out folders) to --out's, a run of a later file replacing the same task, seed and arm; "
                        "then rewrite the table and plots; run nothing")
    p.add_argument("--results-md", default=None,
                   help="also write the tables into this Markdown file, between its lines <!-- compare:begin --> "
                        "and <!-- compare:end --> (added after its title where missing); the rest is kept")
    p.add_argument("--rescore-only", action="store_true",
                   help="only re-score recorded runs whose arm now chooses its final prompt by another rule (from "
                        "their kept vectors); run nothing new")
    p.add_argument("--verbose", type=int, default=0)


def parser(default_out: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The command's flags (the module docstring is its help)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for add in (_add_task_flags, _add_arm_flags, _add_trial_flags):
        add(p)
    _add_run_flags(p, default_out)
    return p


def parse_args(argv=None, default_out: str | None = None, prog: str | None = None):
    p = parser(default_out, prog)
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _check_data(p: argparse.ArgumentParser, args) -> None:
    """Each task's data loaded for each seed before anything runs (the trainable's loader, cached in this
    process): a data error of the user's (too few examples of a class for ``--shots``, a bad label column, an
    unreadable file) ends the command with one line (``p.error``, exit 2) instead of a traceback mid-run."""
    from trainables.text_prompt import dataset_for

    for dataset in args.datasets:
        for seed in args.seeds:
            try:
                dataset_for(base_config(args, dataset, seed))
            except ValueError as e:
                p.error(f"the data of {dataset} (seed {seed}, --shots {args.shots}): {e}")


def ray_init_options(args) -> dict:
    """Extra ``ray.init`` arguments of the tune backend: none, unless ``--warm`` asks that worker processes
    import the trainable before they take work (``ray_llm_search.warm``, experimental)."""
    if not getattr(args, "warm", False):
        return {}
    from ray_llm_search import warm

    return warm.init_options("trainables.text_prompt")


def main(argv=None, llm_factory=None, default_out: str | None = None,
         prog: str = "python -m ray_llm_search.compare") -> dict:
    """Run what the arguments ask (see the module docstring); ``llm_factory(args, seed)`` replaces the LLM
    (tests use a scripted one). Returns the results, the table's text and the plots' paths."""
    p = parser(default_out, prog)
    args = p.parse_args(argv)
    _check_args(p, args)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = load_results(results_path)
    if args.merge:
        try:
            counts = merge_results(results, args.merge)
        except ValueError as e:  # a missing file, runs at another budget: one line, like a bad flag
            p.error(str(e))
        save_results(results, results_path)
        print(f"merged {', '.join(args.merge)}: {counts['added']} runs added, {counts['replaced']} replaced")
    elif not args.replot:
        import ray

        _check_data(p, args)
        results.setdefault("commands", []).append(f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv))
        if args.backend == "tune":  # the inline backend needs no Ray cluster
            ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True, **ray_init_options(args))
        print(f"budget per arm and seed: {budget(args)}")
        units = _pending_units(args, results, results_path)
        _run_units(args, units, results, results_path, llm_factory)
        if ray.is_initialized():
            ray.shutdown()
    table = write_table(results, os.path.join(args.out, "RESULTS_TABLE.md"))
    print(table)
    if args.results_md:
        write_results_md(args.results_md, table, results, regenerate_command(results, args.out, args.results_md, prog))
    try:
        plots = write_plots(results, args.out)
        print("plots: " + ", ".join(plots))
    except ImportError:
        plots = []
        print("matplotlib is not installed: no plot (pip install matplotlib, then --replot)")
    return {"results": results, "table": table, "plots": plots}


def _pending_units(args, results: dict, results_path: str) -> list[tuple[str, int, str]]:
    """The (dataset, seed, arm) runs still to do; on the way, each seed prompt's test score is recorded and
    recorded runs whose arm now chooses its final prompt by another rule are re-scored from their vectors."""
    b = budget(args)
    cache_path = os.path.join(args.out, "selection_cache.json")  # test scores the selection study computed
    cache = json.load(open(cache_path)) if os.path.isfile(cache_path) else {}
    units = []
    for dataset in args.datasets:
        for seed in args.seeds:
            if not args.no_seed_prompt and not args.rescore_only and not any(
                    r["dataset"] == dataset and r["seed"] == seed for r in results["seed_prompt"]):
                results["seed_prompt"].append(seed_prompt_test(args, dataset, seed))
                save_results(results, results_path)
            for arm in args.arms:
                done = [r for r in results["runs"] if (r["dataset"], r["seed"], r["arm"]) == (dataset, seed, arm)
                        and budget_kind(r) == b["kind"]]
                if done and not args.force:
                    check_recorded(done[0], args, b)
                    rule = arm_select(arm)
                    if done[0].get("select", "acc") == rule:
                        continue
                    if rescore(done[0], rule, args, cache):  # the arm now chooses its final prompt otherwise
                        print(f"{dataset} seed {seed} {arm}: recorded run re-scored by {rule}: test "
                              f"{done[0]['test_by_rule']}", flush=True)
                        save_results(results, results_path)
                        with open(cache_path, "w") as f:
                            json.dump(cache, f)
                        continue
                    print(f"{dataset} seed {seed} {arm}: recorded by {done[0].get('select', 'acc')}, its "
                          f"vectors not kept: run again to choose by {rule}", flush=True)
                if not args.rescore_only:
                    units.append((dataset, seed, arm))
    return units


def _run_units(args, units: list[tuple[str, int, str]], results: dict, results_path: str, llm_factory) -> None:
    """Run each unit (in ``--jobs`` processes with the inline backend), saving every run as it ends."""
    storage = os.path.abspath(os.path.expanduser(args.storage))

    def keep(run: dict) -> None:
        dataset, seed, arm, kind = run["dataset"], run["seed"], run["arm"], budget_kind(run)
        run["args"] = {k: v for k, v in vars(args).items() if k not in ("force", "replot", "rescore_only", "verbose", "jobs")}
        run["args"].update({k: setting(args, dataset, k) for k in GLOBAL_DEFAULTS})
        results["runs"] = [r for r in results["runs"]
                           if (r["dataset"], r["seed"], r["arm"], budget_kind(r)) != (dataset, seed, arm, kind)]
        results["runs"].append(run)
        save_results(results, results_path)
        write_tensorboard(run, args.out)
        per_worker = (f" (per worker {run['worker_steps']} / {run['worker_evaluations']}, {run['exploits']} exploits)"
                      if kind == "workers" or arm == "pbt" else "")
        print(f"{dataset} seed {seed} {arm:>16}: test {run['test_acc']:.3f}  val {run['best_val_acc']:.3f}  "
              f"steps {run['gradient_steps']}  evals {run['n_evaluations']}{per_worker}  LLM calls {run['llm_calls']}  "
              f"{run['search_wall_s']:.0f}s  \"{run['best_prompt']}\"", flush=True)

    if args.jobs > 1 and args.backend == "inline" and llm_factory is None:
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_one_thread) as pool:
            futures = [pool.submit(run_arm, args, d, s, a, storage) for d, s, a in units]
            for future in concurrent.futures.as_completed(futures):
                keep(future.result())
    else:
        # inline runs compute with one torch thread whatever --jobs is: a thread count changes floating point,
        # and runs recorded with --jobs 2 must pair with runs made one at a time
        threads = _one_thread() if args.backend == "inline" else None
        try:
            for dataset, seed, arm in units:
                keep(run_arm(args, dataset, seed, arm, storage, llm_factory))
        finally:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)


def _one_thread() -> int:
    """One torch thread in this process; returns the count it had."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads
