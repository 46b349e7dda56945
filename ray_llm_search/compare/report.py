"""The comparison's outputs: the Markdown tables (per budget: summary, per seed, paired differences with
``stats.mean_ci``'s intervals), the generated section of a results file, the best-so-far plots and TensorBoard."""

from __future__ import annotations

import os
import statistics

from ray_llm_search.compare.accounting import BUDGET_LABELS, BUDGETS, budget_kind
from ray_llm_search.compare.arms import ABLATIONS, ARM_LABELS, ARMS, CONTROLS, PEERS
from ray_llm_search.stats import mean_ci


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_table(results: dict, path: str) -> str:
    """The tables of ``results`` (written to ``path``), one set per budget: runs made at different budgets are
    never in one table, and never paired (``budget_kind``)."""
    runs = results["runs"]
    kinds = [k for k in BUDGETS if any(budget_kind(r) == k for r in runs)]
    if kinds in ([], ["compute"]):
        lines = _tables(runs, results.get("seed_prompt", []))
    else:
        lines = []
        for kind in kinds:
            lines += [f"Budget: {BUDGET_LABELS[kind]} (`--budget {kind}`).", "",
                      *_tables([r for r in runs if budget_kind(r) == kind], results.get("seed_prompt", []),
                               per_worker=kind == "workers"), ""]
        lines = lines[:-1]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def _tables(runs: list[dict], seed_prompt: list[dict], per_worker: bool = False) -> list[str]:
    """The summary, per-seed and paired tables of runs made at one budget; ``per_worker``: the steps and
    evaluations columns also give the busiest worker's (the workers budget)."""
    unit = " (per worker)" if per_worker else ""
    lines = [f"| dataset | arm | seeds | test acc (mean ± std) | best val acc | gradient steps / run{unit} | "
             f"evaluations / run{unit} | LLM calls / run | LLM tokens / run | phases from LLM / pool | "
             "candidates adopted / screened (all runs) | search wall / run (s) | wins (test, per seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in sorted({r["dataset"] for r in runs}):
        rows = [r for r in runs if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in rows})
        by = {(r["arm"], r["seed"]): r for r in rows}
        baseline = [r for r in seed_prompt if r["dataset"] == dataset]
        if baseline:
            lines.append(f"| {dataset} | seed prompt as text, no search | {len(baseline)} | "
                         f"{_mean_std([r['test_acc'] for r in baseline])} | - | 0 | 0 | 0 | 0 | - | - | - | - |")
        for arm in ARMS:
            mine = [by[(arm, s)] for s in seeds if (arm, s) in by]
            if not mine:
                continue
            wins = sum(1 for r in mine if all(r["test_acc"] >= by[(a, r["seed"])]["test_acc"]
                                             for a in ARMS if (a, r["seed"]) in by))
            lines.append(
                f"| {dataset} | {ARM_LABELS[arm]} | {len(mine)} | {_mean_std([r['test_acc'] for r in mine])} | "
                f"{_mean_std([r['best_val_acc'] for r in mine])} | {_count(mine[0], 'gradient_steps', per_worker)} | "
                f"{_count(mine[0], 'n_evaluations', per_worker)} | {statistics.mean(r['llm_calls'] for r in mine):.0f} | "
                f"{statistics.mean(r['llm_tokens'] for r in mine):.0f} | "
                f"{statistics.mean(_starts(r, 'llm') for r in mine):.1f} / {statistics.mean(_starts(r, 'pool') for r in mine):.1f} | "
                f"{sum(adopted(r) for r in mine)} / {sum(r.get('screened', 0) for r in mine)} | "
                f"{statistics.mean(r['search_wall_s'] for r in mine):.0f} | {wins}/{len(mine)} |")
    lines += ["", "Per seed: test accuracy (best validation accuracy) and the selected prompt's generation.", "",
              "| dataset | seed | test n | seed prompt | " + " | ".join(ARM_LABELS[a] for a in ARMS) + " |",
              "|---|---|---|---|" + "---|" * len(ARMS)]
    for dataset in sorted({r["dataset"] for r in runs}):
        by = {(r["arm"], r["seed"]): r for r in runs if r["dataset"] == dataset}
        base = {r["seed"]: r for r in seed_prompt if r["dataset"] == dataset}
        for seed in sorted({s for _, s in by}):
            cells = [f"{by[(a, seed)]['test_acc']:.3f} ({by[(a, seed)]['best_val_acc']:.3f}), gen "
                     f"{by[(a, seed)]['best_generation']}" if (a, seed) in by else "-" for a in ARMS]
            test_n = next(r["test_n"] for (a, s), r in by.items() if s == seed)
            first = f"{base[seed]['test_acc']:.3f}" if seed in base else "-"
            lines.append(f"| {dataset} | {seed} | {test_n} | {first} | " + " | ".join(cells) + " |")
    lines += ["", *paired_table(runs)]
    return lines


def _count(run: dict, key: str, per_worker: bool) -> str:
    """A run's steps or evaluations in all, with the busiest worker's where ``per_worker``."""
    if not per_worker:
        return str(run[key])
    return f"{run[key]} ({run['worker_steps' if key == 'gradient_steps' else 'worker_evaluations']})"


RESULTS_BEGIN, RESULTS_END = "<!-- compare:begin -->", "<!-- compare:end -->"


def regenerate_command(results: dict, out: str, results_md: str, prog: str) -> str:
    """One command that runs every (dataset, seed, arm) recorded in ``results`` (those already recorded are
    skipped: it finishes an interrupted study, and on a fresh ``out`` redoes it) and writes the tables again."""
    commands = []
    for kind in BUDGETS:  # one command per budget (runs of the compute budget alone: the command it always was)
        runs = [r for r in results["runs"] if budget_kind(r) == kind]
        if not runs:
            continue
        datasets = sorted({r["dataset"] for r in runs})
        seeds = sorted({r["seed"] for r in runs})
        arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
        b = runs[0].get("budget", {})
        backend = "--backend tune" if "pbt" in arms else "--backend inline --jobs 2"  # PBT needs real Tune trials
        shape = ("" if kind == "compute" else f"--budget {kind} --population {b['population']} --generations "
                 f"{b['generations']} --steps {b['steps_per_phase']} --eval-every {b['eval_every']} ")
        commands.append(f"{prog} --datasets {' '.join(datasets)} --seeds {' '.join(map(str, seeds))} --arms "
                        f"{' '.join(arms)} {shape}{backend} --keep-vectors --out {out} --results-md {results_md}")
    return "\n".join(commands)


def write_results_md(path: str, table: str, results: dict, command: str) -> None:
    """Put ``table`` (what ``write_table`` wrote) between the markers of the Markdown file ``path``, with
    ``command``, the one that regenerates it; the text outside the markers is kept (markers are added after
    the first line where the file has none; a missing file is created)."""
    block = [RESULTS_BEGIN, "",
             f"The tables below are generated ({len(results['runs'])} runs); this command regenerates them, running "
             "whatever its results file lacks:", "", "```bash", command, "```", "",
             table.rstrip("\n"), "", RESULTS_END]
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else "# Results\n"
    if RESULTS_BEGIN in text and RESULTS_END in text.split(RESULTS_BEGIN, 1)[1]:
        before, rest = text.split(RESULTS_BEGIN, 1)
        after = rest.split(RESULTS_END, 1)[1]
    else:
        first, _, rest = text.partition("\n")
        before, after = first + "\n\n", "\n\n" + rest.lstrip("\n")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(before + "\n".join(block) + after)
    os.replace(path + ".tmp", path)


def paired(values: list[float]) -> str:
    """``mean ± half-width`` of a 95% t-interval over seeds (a single seed: the value alone; ``stats.mean_ci``)."""
    return mean_ci(values)


def paired_table(runs: list[dict]) -> list[str]:
    """Test accuracy of each arm minus gradient only's, seed by seed (same splits, same generation 0), with a
    95% interval; and the screened LLM arm minus its no-LLM control. The last row averages the datasets."""
    if len({budget_kind(r) for r in runs}) > 1:
        raise ValueError("paired_table: runs made at different budgets are never paired; pass one budget's runs")
    pairs = [(a, "gradient") for a in ARMS if a != "gradient"] + list(CONTROLS) + list(ABLATIONS) + list(PEERS)
    by = {(r["dataset"], r["arm"], r["seed"]): r["test_acc"] for r in runs}
    datasets = sorted({r["dataset"] for r in runs})
    present = [(a, b) for a, b in pairs if any((d, a, s) in by and (d, b, s) in by for d, _, s in by)]
    if not present:
        return []
    head = ["| dataset | " + " | ".join(f"{ARM_LABELS[a]} − {ARM_LABELS[b]}" for a, b in present) + " |",
            "|---|" + "---|" * len(present)]
    rows, means = [], {p: [] for p in present}
    for d in datasets:
        cells = []
        for a, b in present:
            seeds = sorted(s for dd, aa, s in by if dd == d and aa == a and (d, b, s) in by)
            diffs = [by[(d, a, s)] - by[(d, b, s)] for s in seeds]
            cells.append(f"{paired(diffs)} (n={len(diffs)})" if diffs else "-")
            if diffs:
                means[(a, b)].append(statistics.mean(diffs))
        rows.append(f"| {d} | " + " | ".join(cells) + " |")
    rows.append("| mean over datasets | " + " | ".join(
        f"{statistics.mean(means[p]):+.3f} ({len(means[p])} sets)" if means[p] else "-" for p in present) + " |")
    return ["Paired test-accuracy differences per seed (mean ± 95% t-interval over seeds):", "", *head, *rows]


def adopted(run: dict) -> int:
    """Screened candidates a chain took in a run (its phase started from ``candidate i``)."""
    return sum(1 for e in run["evaluations"] if str(e.get("start") or "").startswith("candidate"))


def _starts(run: dict, origin: str) -> int:
    """Phases of a run that started from an LLM candidate (``llm``) or a pool fill-in (``pool``)."""
    return len({e["trial_id"] for e in run["evaluations"] if e["origin"] == origin})


def write_plots(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = {"gradient": "tab:blue", "llm": "tab:orange", "restarts": "tab:green", "chains-screened": "tab:red",
              "chains-screened-perturb": "tab:purple", "late-mix": "tab:brown", "late-mix-perturb": "tab:gray",
              "restarts-perturb": "tab:olive", "authors": "tab:cyan", "authors-perturb": "tab:pink",
              "chains-paired": "darkred", "chains-paired-perturb": "indigo", "late-mix-text": "goldenrod",
              "authors-faithful": "teal", "authors-paired": "navy", "authors-paired-perturb": "salmon",
              "text-first": "darkgreen", "text-first-perturb": "lightgreen", "halving": "darkviolet",
              "halving-perturb": "plum", "descent-shown": "darkorange", "descent-shown-perturb": "navajowhite",
              "pbt": "black"}
    if set(ARMS) - set(colors):
        raise RuntimeError(f"compare.write_plots: no colour for {sorted(set(ARMS) - set(colors))}")
    for kind, dataset in sorted({(budget_kind(r), r["dataset"]) for r in results["runs"]}):
        # one figure per budget (curve_budget: one worker's steps and evaluations under the workers budget)
        runs = [r for r in results["runs"] if r["dataset"] == dataset and budget_kind(r) == kind]
        per = " per worker" if kind == "workers" else ""
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "curve_steps", f"gradient steps spent{per} (phases of a generation side by side)"),
                               (axes[1], "curve_evals", f"validation evaluations{per}")):
            for arm in ARMS:
                mine = [r for r in runs if r["arm"] == arm]
                if not mine:
                    continue
                xs = sorted({x for r in mine for x, _ in r[key]})
                ys = [[_value_at(r[key], x) for x in xs] for r in mine]
                mean = [statistics.mean(col) for col in zip(*ys, strict=True)]
                std = [statistics.pstdev(col) for col in zip(*ys, strict=True)]
                ax.step(xs, mean, where="post", color=colors[arm], label=f"{ARM_LABELS[arm]} (n={len(mine)})")
                ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)], step="post", color=colors[arm],
                                alpha=0.15)
            ax.set_xlabel(label)
            ax.set_ylabel("best-so-far validation accuracy")
            ax.grid(alpha=0.3)
        axes[0].set_title(f"{dataset}: mean ± std over seeds (LLM only: 0 steps, at its round)", fontsize=9)
        axes[1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = os.path.join(out, f"curves_{dataset}{'' if kind == 'compute' else '_' + kind}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _value_at(curve: list, x: float) -> float:
    value = curve[0][1]
    for cx, v in curve:
        if cx > x:
            break
        value = v
    return value


def write_tensorboard(run: dict, out: str) -> None:
    from tensorboardX import SummaryWriter

    kind = budget_kind(run)  # runs of another budget than equal compute: a folder of their own
    folder = os.path.join(out, "tensorboard", run["dataset"], f"{run['arm'].replace('+', '_')}_seed{run['seed']}"
                          + ("" if kind == "compute" else f"_{kind}"))
    writer = SummaryWriter(folder)
    for x, v in run["curve_steps"]:
        writer.add_scalar("best_so_far_val_acc/by_gradient_steps", v, int(x))
    for x, v in run["curve_evals"]:
        writer.add_scalar("best_so_far_val_acc/by_evaluations", v, int(x))
    writer.add_scalar("test_acc", run["test_acc"], 0)
    writer.add_text("best_prompt", run["best_prompt"] or "", 0)
    writer.close()
