"""Benchmark: would descending while the mentor thinks pay, on this machine? (issue #13's next step)

In the default design (``"authors-paired"``) the one chain waits for each LLM round, because it screens the
round's candidates before its first step. The alternative measured here: the chain starts its steps the moment
its phase begins, the round and the steps sharing the cores (half the threads each), and the candidates are
screened when the round ends (all the threads again); when none wins (every run recorded so far: 0 of 600
adopted) the steps already taken are the serial order's (the same batches and updates, up to the floating-point
effect of the thread count). This runs one quickstart
generation both ways, side by side in one run, in two processes (the phase, the mentor), each loaded and
warmed before timing:

- serial: the round with every thread, then the screening evaluations and the phase with every thread;
- overlap: the round and the phase's steps at once, each with half the threads; when the round ends the phase
  takes every thread, screens, and goes on.

    python examples/bench_overlap.py                  # 3 repetitions of each, alternating
    python examples/bench_overlap.py --reps 5 --threads 2 --json overlap.json

It prints each repetition, the medians and their ratio. Nothing here changes the search: it measured whether
building the overlap into ``LLMSearch`` and ``trainables.phase`` was worth it (it is built: ``overlap=True``).

``--quickstart N`` measures the built thing instead: the whole quickstart, ``--overlap off`` and ``on`` alternating,
N times each, each in a process of its own, with the mentor of ``--llm`` (e.g. ``llama-cpp``, the 1.5B mentor), and
prints for each run Tune's wall, the seconds in which a round was asked and no phase descended
(``timeline.round_wait``) and its share of Tune's wall, the phases' seconds per step and the test accuracy, then
the medians and on / off ratios:

    python examples/bench_overlap.py --quickstart 2 --llm llama-cpp
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS, EVAL_EVERY = 12, 4  # the quickstart's phases
CANDIDATES = ["the topic of this news article is politics", "news category:", "this text is about",
              "classify the article", "the topic of this news article is business", "who is the person with name"]


def _phase_worker(conn, go, round_done) -> None:
    import torch

    import trainables.phase as phase
    from trainables.benchmark_data import BENCHMARKS
    from trainables.text_prompt import build_classifier, dataset_for

    bbc = BENCHMARKS["bbc"]
    config = {"data": bbc.data_spec(shots=16, val_shots=8, test_size=250, seed=0), "steps": STEPS,
              "eval_every": EVAL_EVERY, "lr": 0.05, "batch_size": 16, "prompt_length": 8, "max_length": 64,
              "prompt_init": bbc.seed_prompts[0], "phase_seed": 0}
    data = dataset_for(config)
    model = build_classifier(config, data)
    phase.run_phase({**config, "steps": 2}, model, data.train, data.val)  # warm: first optimizer, first calls
    starts = [model.init_vectors(t) for t in CANDIDATES]
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            return
        mode, threads, steps = command
        p = phase.Phase({**config, "steps": steps}, model, data.train, data.val, report=lambda metrics, ckpt: None)
        p.prepare()
        screened_at = None

        def screen(p=p, threads=threads):  # returns when the screening began
            began = time.time()
            torch.set_num_threads(threads)
            for vectors in starts:
                p.evaluate(vectors)
            return began

        began = _arm(conn, go, mode, threads)
        if mode == "serial":
            round_done.wait()
            screened_at = screen()
        first_step_at = None
        for step in range(1, steps + 1):
            if screened_at is None and round_done.is_set():
                screened_at = screen()
            first_step_at = first_step_at or time.time()
            p.step(step)
            if step % EVAL_EVERY == 0:
                p.evaluate(p.prompt)
        if screened_at is None:
            round_done.wait()
            screened_at = screen()
        conn.send({"began": began, "ended": time.time(), "screened_at": screened_at, "first_step_at": first_step_at})


def _arm(conn, go, mode: str, threads: int) -> float:
    """Take this mode's threads (all of them serial, half when overlapping), say so, wait for the go; its time."""
    import torch

    torch.set_num_threads(threads if mode == "serial" else max(1, threads // 2))
    conn.send("armed")
    go.wait()
    return time.time()


def _llm_worker(conn, go, round_done, meta_prompt: str, n: int) -> None:
    from ray_llm_search.llm.local import LocalLLM

    llm = LocalLLM(dtype="float32")
    llm.load()
    llm.propose(meta_prompt, n)  # warm
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            return
        mode, threads, _ = command
        llm._calls = 0  # every round samples with the same seed: the same continuations in both modes
        began = _arm(conn, go, mode, threads)
        replies = llm.propose(meta_prompt, n)
        ended = time.time()
        round_done.set()
        conn.send({"began": began, "ended": ended, "replies": len(replies)})


def quickstarts(reps: int, llm: str, storage: str) -> dict:
    """The quickstart ``reps`` times each way, alternating, each in a process of its own; its summaries."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: dict = {"off": [], "on": []}
    for rep in range(reps):
        for mode in ("off", "on"):
            name = f"overlap-{mode}-{stamp}-{rep}"
            subprocess.run([sys.executable, script, "--llm", llm, "--overlap", mode, "--storage", storage,
                            "--name", name], check=True, stdout=subprocess.DEVNULL)
            with open(os.path.join(storage, name, "quickstart_summary.json")) as f:
                s = json.load(f)
            steps = s["timeline"].get("in_phase_compute_s")
            runs[mode].append(s)
            print(f"rep {rep} overlap {mode:3s}: Tune {s['tune_wall_s']:.1f}s, waited for rounds {s['round_wait_s']:.1f}s "
                  f"= {100 * s['round_wait_share']:.1f}%, phases' own compute {steps}s, test acc {s['best_test_acc']:.3f}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("tune_wall_s", "round_wait_share")}
           for m in runs}
    print(f"median Tune wall: off {med['off']['tune_wall_s']:.1f}s, on {med['on']['tune_wall_s']:.1f}s (on / off "
          f"{med['on']['tune_wall_s'] / med['off']['tune_wall_s']:.2f}); rounds' share: off "
          f"{100 * med['off']['round_wait_share']:.1f}%, on {100 * med['on']['round_wait_share']:.1f}%")
    return runs


def meta_prompt() -> str:
    """Round 1's meta-prompt of the quickstart's search (``LLMSearch.dry_run``: no model is loaded)."""
    from ray_llm_search import LLMSearch, presets
    from ray_llm_search.testing import ScriptedLLM
    from trainables.benchmark_data import BENCHMARKS

    bbc = BENCHMARKS["bbc"]
    search = LLMSearch.from_preset(ScriptedLLM([]), bbc.task, list(bbc.seed_prompts), presets.DEFAULT, steps=STEPS,
                                   eval_every=EVAL_EVERY, population=4, generations=3, metric="val_acc", mode="max",
                                   max_prompt_words=12)
    return search.dry_run()["meta_prompt"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the trial's CPUs (the quickstart: all)")
    p.add_argument("--continuations", type=int, default=14, help="the mentor's continuations per round")
    p.add_argument("--steps", type=int, default=STEPS, help=f"steps of the phase (default {STEPS}, the quickstart's)")
    p.add_argument("--json", default=None, help="also write every repetition's timestamps here")
    p.add_argument("--quickstart", type=int, default=0, metavar="N",
                   help="instead: the quickstart N times with --overlap off and on, alternating")
    p.add_argument("--llm", default="llama-cpp", help="with --quickstart: the quickstart's --llm")
    p.add_argument("--storage", default="/tmp/bench_overlap", help="with --quickstart: the runs' folder")
    args = p.parse_args(argv)
    if args.quickstart:
        return quickstarts(args.quickstart, args.llm, args.storage)
    if args.steps < 1 or args.steps % EVAL_EVERY:
        p.error(f"--steps must be a positive multiple of {EVAL_EVERY}, got {args.steps}")
    ctx = mp.get_context("spawn")
    go, round_done = ctx.Event(), ctx.Event()
    phase_conn, phase_child = ctx.Pipe()
    llm_conn, llm_child = ctx.Pipe()
    workers = [ctx.Process(target=_phase_worker, args=(phase_child, go, round_done), daemon=True),
               ctx.Process(target=_llm_worker, args=(llm_child, go, round_done, meta_prompt(), args.continuations),
                           daemon=True)]
    for w in workers:
        w.start()
    assert phase_conn.recv() == "ready" and llm_conn.recv() == "ready"
    walls: dict = {"serial": [], "overlap": []}
    rounds: dict = {"serial": [], "overlap": []}
    runs: list = []
    try:
        for rep in range(args.reps):
            for mode in ("serial", "overlap"):
                go.clear()
                round_done.clear()
                phase_conn.send((mode, args.threads, args.steps))
                llm_conn.send((mode, args.threads, args.steps))
                assert phase_conn.recv() == "armed" and llm_conn.recv() == "armed"  # both about to wait on go
                go.set()
                ph, lm = phase_conn.recv(), llm_conn.recv()
                wall = max(ph["ended"], lm["ended"]) - min(ph["began"], lm["began"])
                walls[mode].append(wall)
                rounds[mode].append(lm["ended"] - lm["began"])
                runs.append({"rep": rep, "mode": mode, "wall_s": wall, "phase": ph, "round": lm})
                print(f"rep {rep} {mode:7s}: round {rounds[mode][-1]:.2f}s, generation (round, {len(CANDIDATES)} "
                      f"screening evaluations, {args.steps} steps, {args.steps // EVAL_EVERY} evaluations) {wall:.2f}s",
                      flush=True)
    finally:
        for conn in (phase_conn, llm_conn):
            try:
                conn.send(None)
            except OSError:  # that worker died: its error is the one to see, not this
                pass
        for w in workers:
            w.join(timeout=30)
    serial, overlap = statistics.median(walls["serial"]), statistics.median(walls["overlap"])
    print(f"median generation: serial {serial:.2f}s, overlap {overlap:.2f}s, overlap / serial {overlap / serial:.2f} "
          f"(rounds: {statistics.median(rounds['serial']):.2f}s with {args.threads} threads, "
          f"{statistics.median(rounds['overlap']):.2f}s with {max(1, args.threads // 2)} beside the phase)")
    out = {"serial_s": walls["serial"], "overlap_s": walls["overlap"], "ratio": overlap / serial, "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
