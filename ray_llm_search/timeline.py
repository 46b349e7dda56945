"""Where the workers' time goes: phases, the setup inside them, and the gaps between them.

Built from what the phases of ``trainables.phase`` report (``started_at``, ``setup_s``, ``first_step_s``,
``first_compute_s``, ``elapsed_s``) and Tune's ``pid`` of the worker process, so it needs nothing but the
trials' last results::

    from ray_llm_search.timeline import worker_timeline
    summary = worker_timeline([t.last_result for t in analysis.trials], wall_s=tune_wall, workers=2)

No torch, no Ray: plain numbers in, plain numbers out.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict


def worker_timeline(results: list[dict], wall_s: float, workers: int, phase_compute_s: float | None = None,
                    compute_s: float | None = None, started_at: float | None = None) -> dict:
    """Summary of a run's worker time from each trial's last result.

    Args:
        results: one result per trial (its last), with ``pid``, ``started_at``, ``elapsed_s`` and ``setup_s``
            (results without them, e.g. from another trainable, are left out and counted in ``untimed``).
        wall_s: the run's wall time (Tune's ``tune.run`` or ``Tuner.fit``).
        workers: trials that could run at once (the CPUs given to trials / CPUs per trial).
        phase_compute_s: the same phase timed in one process, without Tune, if measured; gives ``ideal_s``
            (``phase_compute_s * trials / workers``) and ``wall_over_ideal``.
        compute_s: every trial's compute together, timed the same way, where phases differ (e.g. some score
            text without a step); gives ``ideal_s = compute_s / workers`` instead.
        started_at: ``time.time()`` when the run began (``tune.run`` called); gives ``lead_in_s`` (from it to the
            first phase's start: Tune starting the first worker, whose imports come before the phase) and
            ``tail_s`` (from the last phase's end to the end of ``wall_s``).

    Returns a dict: ``trials``, ``untimed``, ``processes`` (distinct worker processes), ``phase_s`` (sum of
    the phases' own spans), ``utilisation`` (``phase_s / (wall_s * workers)``), ``setup_fresh_s`` and
    ``setup_warm_s`` (median setup of a process's first phase and of its later ones), ``first_step_warm_s``
    (median and max of warm phases' ``first_step_s``), ``first_compute_warm_s`` (the same of their
    ``first_compute_s``: the wait before a warm phase computes anything, a screening evaluation or a step),
    ``gap_s`` (median, max and total idle time between
    one phase's end and the next phase's start in the same process) and, given ``phase_compute_s``,
    ``ideal_s`` and ``wall_over_ideal``; where every phase reports ``compute_s`` (its steps' and evaluations'
    own seconds, ``trainables.phase``), ``in_phase_compute_s`` (their sum) and ``wall_over_in_phase``
    (``wall_s`` over that sum per worker); where every phase reports ``report_s``, their sum as ``report_s``
    (seconds the phases spent sending results and writing restart checkpoints, each phase's last result
    excepted).
    """
    timed = [r for r in results if _number(r.get("started_at")) and _number(r.get("elapsed_s"))
             and r.get("pid") is not None]
    by_pid: dict = defaultdict(list)
    for r in timed:
        by_pid[r["pid"]].append(r)
    phase_s = sum(float(r["elapsed_s"]) for r in timed)
    out = {"trials": len(timed), "untimed": len(results) - len(timed), "processes": len(by_pid),
           "phase_s": round(phase_s, 2), "utilisation": round(phase_s / max(wall_s * max(workers, 1), 1e-9), 3),
           **_process_reuse(by_pid)}
    if _number(started_at) and timed:
        out["lead_in_s"] = round(min(r["started_at"] for r in timed) - started_at, 3)
        out["tail_s"] = round(started_at + wall_s - max(r["started_at"] + r["elapsed_s"] for r in timed), 3)
    out.update(_in_phase(timed, wall_s, workers))
    total = compute_s if compute_s is not None else (
        phase_compute_s * len(timed) if phase_compute_s is not None else None)
    if total is not None and total > 0 and timed:
        ideal = total / max(workers, 1)
        out["ideal_s"] = round(ideal, 2)
        out["wall_over_ideal"] = round(wall_s / ideal, 3)
    return out


def _process_reuse(by_pid: dict) -> dict:
    """Setup of a process's first phase and of its later ones, the later phases' waits before their first step
    and first computation, and the gaps between one phase's end and the next one's start in a process."""
    fresh, warm, first_warm, compute_warm, gaps = [], [], [], [], []
    for rows in by_pid.values():
        rows.sort(key=lambda r: r["started_at"])
        for i, r in enumerate(rows):
            setup = r.get("setup_s")
            if _number(setup):
                (fresh if i == 0 else warm).append(float(setup))
            if i and _number(r.get("first_step_s")):
                first_warm.append(float(r["first_step_s"]))
            if i and _number(r.get("first_compute_s")):
                compute_warm.append(float(r["first_compute_s"]))
            if i:
                prev = rows[i - 1]
                gaps.append(max(0.0, r["started_at"] - (prev["started_at"] + prev["elapsed_s"])))
    return {"setup_fresh_s": _median(fresh), "setup_warm_s": _median(warm), "first_step_warm_s": _spread(first_warm),
            "first_compute_warm_s": _spread(compute_warm), "gap_s": {**_spread(gaps), "total": round(sum(gaps), 2)}}


def _in_phase(timed: list[dict], wall_s: float, workers: int) -> dict:
    """What the phases say of their own time, where every one says it: ``report_s`` and ``compute_s``."""
    out = {}
    sent = [r.get("report_s") for r in timed]
    if timed and all(_number(v) for v in sent):
        # reports and restart checkpoints, as each phase's last result has them (that result's own not yet in)
        out["report_s"] = round(sum(sent), 2)
    inside = [r.get("compute_s") for r in timed]
    if timed and all(_number(v) for v in inside):
        # the phases' own steps and evaluations, timed where they ran: the same run's compute, free of the
        # drift of a machine whose speed changes between a measurement and the run (a shared VM's ±15%)
        inside_s = sum(inside)
        out["in_phase_compute_s"] = round(inside_s, 2)
        if inside_s > 0:
            out["wall_over_in_phase"] = round(wall_s / (inside_s / max(workers, 1)), 3)
    return out


def round_wait(results: list[dict], rounds: list[tuple[float, float]], started_at: float, wall_s: float) -> dict:
    """How long the search waited for its LLM rounds: the seconds of Tune's wall (``started_at`` to
    ``started_at + wall_s``) during which some round was being asked (``rounds``: ``(start, end)`` times) and
    no phase was descending. A phase descends from its first step (``started_at + first_step_s``) to its end
    (``started_at + elapsed_s``) less the seconds it waited at its end for candidates still owed (``wait_s``,
    ``LLMSearch(overlap=True)``); its setup and its start's evaluations are not descent. Returns ``wait_s``,
    ``share`` (``wait_s / wall_s``) and ``rounds_s`` (the rounds' own seconds within the wall, overlapping or not).
    """
    end = started_at + wall_s
    asked = _union([(max(a, started_at), min(b, end)) for a, b in rounds if b > a])
    descending = []
    for r in results:
        if not (_number(r.get("started_at")) and _number(r.get("elapsed_s")) and _number(r.get("first_step_s"))):
            continue
        a = r["started_at"] + r["first_step_s"]
        b = r["started_at"] + r["elapsed_s"] - (float(r["wait_s"]) if _number(r.get("wait_s")) else 0.0)
        if b > a:
            descending.append((a, b))
    waited = _measure(asked) - _measure(_intersect(asked, _union(descending)))
    return {"wait_s": round(waited, 2), "share": round(waited / max(wall_s, 1e-9), 3),
            "rounds_s": round(_measure(asked), 2)}


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _intersect(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(max(a, c), min(b, d)) for a, b in x for c, d in y if min(b, d) > max(a, c)]


def _measure(spans: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in spans)


def describe(summary: dict, wall_s: float, workers: int) -> str:
    """The summary as two lines for a log or a terminal."""
    first = summary["first_step_warm_s"]
    computes = summary.get("first_compute_warm_s") or {"median": None, "max": None}
    gap = summary["gap_s"]
    line = (f"utilisation: workers inside phases {100 * summary['utilisation']:.0f}% of the wall ({summary['phase_s']:.0f}s "
            f"of phases on {workers} workers in {wall_s:.0f}s); {summary['processes']} worker processes for "
            f"{summary['trials']} phases")
    if "ideal_s" in summary:
        line += f"; wall / ideal {summary['wall_over_ideal']:.2f} (ideal {summary['ideal_s']:.0f}s of compute timed in-process)"
    if "wall_over_in_phase" in summary:
        line += (f"; wall / the phases' own compute {summary['wall_over_in_phase']:.2f} "
                 f"({summary['in_phase_compute_s']:.0f}s timed inside the phases)")
    detail = (f"setup inside a phase: {_fmt(summary['setup_fresh_s'])} in a new process, {_fmt(summary['setup_warm_s'])} "
              f"on a warm one; a warm phase computes after {_fmt(computes['median'])} (max {_fmt(computes['max'])}) and "
              f"takes its first step after {_fmt(first['median'])} (max {_fmt(first['max'])}; a phase that screens "
              f"candidates evaluates them first); "
              f"gaps between phases in a process: median {_fmt(gap['median'])}, max {_fmt(gap['max'])}, "
              f"total {_fmt(gap['total'])}")
    if "report_s" in summary:
        detail += f"; sending results and checkpoints {_fmt(summary['report_s'])} in all"
    if "lead_in_s" in summary:
        detail += (f"; from the run's start to the first phase {_fmt(summary['lead_in_s'])}, from the last phase's end "
                   f"to the run's end {_fmt(summary['tail_s'])}")
    return line + "\n" + detail


def _spread(values: list[float]) -> dict:
    return {"median": _median(values), "max": round(max(values), 3) if values else None}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
