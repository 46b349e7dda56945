"""Benchmark: threads when the chain descends while the 1.5B mentor decodes (issue #26, item 5).

With ``LLMSearch(overlap=True)`` the quickstart's phase (MiniLM, torch) and llama.cpp's server (Qwen2.5-Coder-1.5B,
one thread, ``OMP_WAIT_POLICY=PASSIVE``) compute at once on the driver's node. This times, side by side in one run,
one gradient step of the quickstart's phase and the server's decoding (tokens per second of a 96-token reply) in
each arrangement, alternating, ``--reps`` times:

- ``alone``: the phase's steps with every thread, no decoding (and the server decoding alone);
- ``T threads beside``: the phase with T torch threads while the server decodes.

A phase process is started per OpenMP wait policy (``default`` and ``PASSIVE``: torch reads ``OMP_WAIT_POLICY`` when
it loads), so the policy's effect is measured too. It prints the medians and the ratios to ``alone``.

    python examples/bench_threads.py --reps 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPT = ("Write 8 short, different instructions (at most 12 words each) that would help a model classify BBC news "
          "articles by topic (business, entertainment, politics, sport, tech). One per line, numbered.")


def _phase_worker(conn, policy: str | None) -> None:
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy
    import torch

    import trainables.phase as phase
    from trainables.benchmark_data import BENCHMARKS
    from trainables.text_prompt import build_classifier, dataset_for

    bbc = BENCHMARKS["bbc"]
    config = {"data": bbc.data_spec(shots=16, val_shots=8, test_size=250, seed=0), "steps": 10_000, "eval_every": 10_000,
              "lr": 0.05, "batch_size": 16, "prompt_length": 8, "max_length": 64, "prompt_init": bbc.seed_prompts[0],
              "phase_seed": 0}
    data = dataset_for(config)
    model = build_classifier(config, data)
    p = phase.Phase(config, model, data.train, data.val, report=lambda metrics, ckpt: None)
    p.prepare()
    step = 1
    p.step(step)
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            return
        threads, seconds = command
        torch.set_num_threads(threads)
        times, end = [], time.monotonic() + seconds
        while time.monotonic() < end or len(times) < 3:
            step += 1
            t = time.perf_counter()
            p.step(step)
            times.append(time.perf_counter() - t)
        conn.send(statistics.median(times))


def _decode(chat, out: list) -> None:
    t = time.perf_counter()
    reply = chat._get_client().chat.completions.create(model=chat.model, messages=[{"role": "user", "content": PROMPT}],
                                                       max_tokens=96, temperature=0.8, seed=0)
    out.append(reply.usage.completion_tokens / (time.perf_counter() - t))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the trial's CPUs (the quickstart: all)")
    p.add_argument("--seconds", type=float, default=8.0, help="steps timed per arrangement when alone")
    args = p.parse_args(argv)
    from ray_llm_search.llm.server import LlamaCppChat

    chat = LlamaCppChat(threads=1, max_tokens=96).load()
    ctx = mp.get_context("spawn")
    workers = {}
    for policy in ("default", "PASSIVE"):
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_phase_worker, args=(child, None if policy == "default" else policy), daemon=True)
        proc.start()
        workers[policy] = (conn, proc)
    for conn, _ in workers.values():
        assert conn.recv() == "ready"
    _decode(chat, [])  # warm
    arrangements = [(policy, t) for policy in workers for t in sorted({args.threads, max(1, args.threads - 1)})]
    steps: dict = {a: {"alone": [], "beside": []} for a in arrangements}
    rates: dict = {"alone": [], **{a: [] for a in arrangements}}
    load = []
    try:
        for rep in range(args.reps):
            out: list = []
            _decode(chat, out)
            rates["alone"].append(out[0])
            for a in arrangements:
                conn = workers[a[0]][0]
                conn.send((a[1], args.seconds))
                steps[a]["alone"].append(conn.recv())
                out = []
                decoder = threading.Thread(target=_decode, args=(chat, out))
                decoder.start()
                while decoder.is_alive():  # the phase steps for as long as the reply is decoded
                    conn.send((a[1], 0.0))
                    steps[a]["beside"].append(conn.recv())
                decoder.join()
                rates[a].append(out[0])
            load.append(os.getloadavg()[0])
            print(f"rep {rep}: load {load[-1]:.1f}; decoding alone {rates['alone'][-1]:.2f} tok/s; " + "; ".join(
                f"{a[0]} {a[1]} thread(s): step {steps[a]['alone'][-1]:.3f}s alone, {statistics.median(steps[a]['beside']):.3f}s "
                f"beside, decoding {rates[a][-1]:.2f} tok/s" for a in arrangements), flush=True)
    finally:
        for conn, proc in workers.values():
            conn.send(None)
            proc.join(timeout=30)
        chat.close()
    alone_rate = statistics.median(rates["alone"])
    best = min(statistics.median(steps[a]["alone"]) for a in arrangements if a[1] == args.threads)
    print(f"medians (load {statistics.median(load):.1f}): decoding alone {alone_rate:.2f} tok/s; phase step alone with "
          f"{args.threads} threads {best:.3f}s")
    for a in arrangements:
        beside = statistics.median(steps[a]["beside"])
        print(f"  {a[0]:7s} {a[1]} thread(s) beside the server: step {beside:.3f}s = {beside / best:.2f} x alone; "
              f"decoding {statistics.median(rates[a]):.2f} tok/s = {statistics.median(rates[a]) / alone_rate:.2f} x alone")
    return {"steps": {f"{a[0]}-{a[1]}": v for a, v in steps.items()},
            "rates": {str(k): v for k, v in rates.items()}}


if __name__ == "__main__":
    main()
