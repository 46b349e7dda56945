"""The mentor's own figure, before any gradient: can this LLM write prompts that beat the ones it is shown?

For each task and seed (the seed fixes the k-shot splits exactly as ``python -m ray_llm_search.compare`` does),
the seed prompts are scored *as text* on validation (their embeddings, no gradient step), shown to the mentor
in one round (``Mentor.build_scored``, the LLM's own style), and every candidate it returns is scored the same
way. Per round: the share of candidates that **beat the best text shown** (higher validation accuracy, or equal
accuracy and lower loss), and the share that is **not a near copy** of a shown text (a near copy is within two
word edits of one, case and punctuation aside). The control is the search's own no-LLM proposal, random word
edits of the same texts (``pool.perturb``), as many as were asked of the LLM, scored the same way.

    python -m ray_llm_search.compare.mentor_quality --datasets sst2 trec ag_news bbc --seeds 0 1 2 3 4 \\
        --llm llama-cpp --out examples/results/mentor_quality.json

Rounds are merged into ``--out`` across invocations (keyed by mentor, task and seed); the table of every
recorded round is printed at the end (``--table-only`` prints it without running anything).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time

from ray_llm_search.compare.cli import parse_args as compare_args
from ray_llm_search.compare.tasks import base_config, task_of
from ray_llm_search.flags import add_llm_flags, llm_from_flags, llm_label
from ray_llm_search.mentor import Mentor
from ray_llm_search.pool import Evaluation, perturb, vocabulary_of

__all__ = ["near_copy", "round_figures", "main"]

_WORDS = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def word_edits(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two word lists."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def near_copy(text: str, shown: list[str], edits: int = 2) -> bool:
    """``text`` is within ``edits`` word edits of a shown text (case and punctuation aside)."""
    words = _words(text)
    return any(word_edits(words, _words(s)) <= edits for s in shown)


def _beats(e: dict, best: dict) -> bool:
    return e["acc"] > best["acc"] or (e["acc"] == best["acc"] and e["loss"] < best["loss"])


def round_figures(shown: list[dict], proposed: list[dict]) -> dict:
    """The figures of one round: ``shown`` and ``proposed`` are ``{"text", "acc", "loss"}`` dicts."""
    best = max(shown, key=lambda e: (e["acc"], -e["loss"]))
    texts = [e["text"] for e in shown]
    n = len(proposed)
    return {"n": n, "beats": sum(_beats(e, best) for e in proposed), "novel": sum(not near_copy(e["text"], texts)
                                                                              for e in proposed),
            "best_shown_acc": best["acc"], "best_acc": max((e["acc"] for e in proposed), default=None)}


def _score(model, data, texts: list[str]) -> list[dict]:
    out = []
    for text in texts:
        loss, acc = model.evaluate(model.init_vectors(text).to(model.device), data.val)
        out.append({"text": text, "acc": float(acc), "loss": float(loss)})
    return out


def run_round(args, compare_args, dataset: str, seed: int, llm) -> dict:
    """One round on one task and seed: the shown texts, the LLM's candidates, the control, all scored as text."""
    from trainables.text_prompt import build_classifier, dataset_for

    task, seeds = task_of(compare_args, dataset)
    config = base_config(compare_args, dataset, seed)
    data = dataset_for(config)
    model = build_classifier(config, data)
    shown = _score(model, data, seeds)
    mentor = Mentor(task, "val_acc", "max", max_words=args.max_prompt_words, prompt_tokens=args.prompt_tokens)
    ranked = sorted(shown, key=lambda e: (-e["acc"], e["loss"]))
    meta = mentor.build_scored([Evaluation(0, e["text"], e["loss"], e["acc"]) for e in ranked], args.candidates,
                               style=llm.style)
    started = time.monotonic()
    error = None
    try:
        replies = llm.propose(meta, args.candidates)
    except Exception as e:  # noqa: BLE001  (a failed round is a figure too: no candidates)
        replies, error = [], f"{type(e).__name__}: {e}"
    seconds = time.monotonic() - started
    seen = {" ".join(_words(t)) for t in seeds}
    parsed = mentor.parse(replies, args.candidates, seen=lambda t: " ".join(_words(t)) in seen)
    rng = random.Random(f"{seed}:{dataset}:mentor-quality")
    vocabulary = vocabulary_of(seeds + [task])
    control: list[str] = []
    for i in range(50 * args.candidates):
        if len(control) >= args.candidates:
            break
        text = perturb(ranked[i % len(ranked)]["text"], rng, vocabulary)
        key = " ".join(_words(text))
        if key and key not in seen and text not in control:
            control.append(text)
    proposed, edits = _score(model, data, parsed.candidates), _score(model, data, control)
    return {"llm": args.label, "dataset": dataset, "seed": seed, "asked": args.candidates,
            "seconds": round(seconds, 1), "error": error, "usage": dict(llm.usage), "shown": shown,
            "replies": replies, "rejected": dict(parsed.rejected), "proposed": proposed, "control": edits,
            "figures": round_figures(shown, proposed), "control_figures": round_figures(shown, edits)}


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}% ({part}/{whole})" if whole else "-"


def table(rounds: list[dict]) -> str:
    """Markdown table: per mentor and task (and all tasks), rounds, candidates per round asked/returned, the
    share that beats the best shown text, the share not a near copy; the same for the word-edit control."""
    rows = ["| mentor | task | rounds | candidates (returned / asked) | beat the best shown | not a near copy | "
            "word edits: beat the best shown | word edits: not a near copy |", "|---|---|---|---|---|---|---|---|"]
    mentors = sorted({r["llm"] for r in rounds})
    for llm in mentors:
        mine = [r for r in rounds if r["llm"] == llm]
        for task in sorted({r["dataset"] for r in mine}) + ["all"]:
            rs = [r for r in mine if task in ("all", r["dataset"])]
            f = {k: sum(r["figures"][k] for r in rs) for k in ("n", "beats", "novel")}
            c = {k: sum(r["control_figures"][k] for r in rs) for k in ("n", "beats", "novel")}
            asked = sum(r["asked"] for r in rs)
            name = f"**{task}**" if task == "all" else task
            rows.append(f"| {llm} | {name} | {len(rs)} | {f['n']} / {asked} | {_share(f['beats'], f['n'])} | "
                        f"{_share(f['novel'], f['n'])} | {_share(c['beats'], c['n'])} | {_share(c['novel'], c['n'])} |")
    return "\n".join(rows)


def load(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["rounds"]


def save(path: str, rounds: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"rounds": rounds}, f, indent=1)
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ray_llm_search.compare.mentor_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["sst2", "trec", "ag_news", "bbc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--candidates", type=int, default=5, help="prompts asked of the mentor per round")
    p.add_argument("--max-prompt-words", type=int, default=12)
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="tell the mentor that a prompt keeps this many tokens (Mentor.prompt_tokens; the text "
                        "trainable keeps 8); its rounds are recorded under the mentor's name + '+told-N-tokens'")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--data-root", default=None)
    add_llm_flags(p, dtype="float32")
    p.add_argument("--label", default=None, help="the mentor's name in the results (default: from the flags)")
    p.add_argument("--out", default="mentor_quality.json")
    p.add_argument("--force", action="store_true", help="rerun rounds already recorded")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        p.error(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
    told = f"+told-{args.prompt_tokens}-tokens" if args.prompt_tokens else ""
    args.label = args.label or llm_label(args) + told
    args.seed = 0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rounds = load(args.out)
    if not args.table_only:
        done = {(r["llm"], r["dataset"], r["seed"]) for r in rounds}
        todo = [(d, s) for d in args.datasets for s in args.seeds if args.force or (args.label, d, s) not in done]
        llm = None
        try:
            for dataset, seed in todo:
                cargs = compare_args(["--datasets", dataset, "--shots", str(args.shots),
                                      *(["--data-root", args.data_root] if args.data_root else [])])
                if llm is None:
                    llm = llm_from_flags(args, seed=0, **({"max_new_tokens": 24} if args.llm == "local" else {}))
                r = run_round(args, cargs, dataset, seed, llm)
                rounds = [x for x in rounds if (x["llm"], x["dataset"], x["seed"]) != (args.label, dataset, seed)]
                rounds.append(r)
                save(args.out, rounds)
                f, c = r["figures"], r["control_figures"]
                print(f"{args.label} {dataset} seed {seed}: {f['n']} candidates in {r['seconds']}s, beat the best "
                      f"shown {f['beats']}, new {f['novel']} (word edits {c['beats']}/{c['n']}); "
                      f"{[e['text'] for e in r['proposed']]}", flush=True)
        finally:
            if llm is not None and hasattr(llm, "close"):
                llm.close()
    print(table(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
