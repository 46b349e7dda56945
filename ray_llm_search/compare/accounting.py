"""What a comparison's arm may spend and what it spent: the budget of a run (``--budget compute`` or ``workers``,
``presets.budget``'s numbers), each trial's steps and evaluations as it reported them, the busiest worker's, the
check that an arm spent exactly the budget, and the best-so-far curves placed on the budget's axes."""

from __future__ import annotations

import math

from ray_llm_search import presets

# The budgets a comparison can hold fixed (--budget): the same total compute (gradient steps and forward
# evaluations, however many trials run at once), or P workers with the same steps per worker (the wall-clock of a
# cluster of P workers: each arm runs at most P trials at once, each worker G*K steps and G*E evaluations).
BUDGETS = ("compute", "workers")


BUDGET_LABELS = {"compute": "equal compute (G*P*K steps, G*P*E evaluations per arm)",
                 "workers": "P workers, the same steps per worker (G*K steps, G*E evaluations each)"}


def budget(args) -> dict:
    """The budget every arm of a run spends (``--budget``): ``presets.budget``'s numbers for the flags, with the
    budget's ``kind``. ``"compute"``: ``gradient_steps`` = ``G*P*K`` and
    ``evaluations`` = ``G*P*E`` in all, however many trials run at once. ``"workers"``: ``P`` workers
    (``workers``), each ``worker_steps`` = ``G*K`` steps and ``worker_evaluations`` = ``G*E`` evaluations (one
    gradient chain's), at most ``P`` trials at once; ``gradient_steps`` and ``evaluations`` are then what the
    ``P`` workers hold together, which a design that leaves workers idle does not spend."""
    if args.steps % args.eval_every:
        raise ValueError(f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every})")
    kind = getattr(args, "budget", "compute")
    if kind not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {kind!r}")
    b = {"kind": kind, **presets.budget(args.population, args.generations, args.steps, args.eval_every)}
    if kind == "workers":
        b.update(workers=args.population, worker_steps=args.generations * args.steps,
                 worker_evaluations=args.generations * b["evals_per_phase"])
    return b


def budget_kind(run: dict) -> str:
    """The budget a recorded run was made at (runs recorded before ``--budget`` existed: ``"compute"``)."""
    return run.get("budget", {}).get("kind", "compute")


def trial_work(evaluations: list[dict]) -> dict[str, dict]:
    """Per trial, from what it reported: its ``generation``, gradient ``steps`` (its last step) and forward
    ``evaluations`` (the count it says it computed: screened candidates included, a reused start score excluded;
    counted by its rows where it does not say, or where it started from another trial's checkpoint, a PBT exploit,
    whose count continues the donor's). An exploited trial must have reached the exploit's step itself (PBT in
    synchronous mode): its steps are then its last step, as for any other trial."""
    work: dict[str, dict] = {}
    said: dict[str, int] = {}
    own_steps: dict[str, set] = {}
    for e in evaluations:
        t = e["trial_id"]
        w = work.setdefault(t, {"generation": int(e.get("generation", 0)), "steps": 0, "rows": 0, "exploits": []})
        w["steps"] = max(w["steps"], int(e["step"]))
        w["rows"] += 0 if e.get("reused") else 1
        if e.get("exploited_from"):
            w["exploits"].append(int(e["step"]))
        else:
            own_steps.setdefault(t, set()).add(int(e["step"]))
        if e.get("evaluations") is not None:
            said[t] = max(said.get(t, 0), int(e["evaluations"]))
    for t, w in work.items():
        behind = [s for s in w["exploits"] if s not in own_steps.get(t, set())]
        if behind:
            raise AssertionError(f"trial {t} took another trial's checkpoint at step {behind[0]}, which it had not "
                                 "reached itself: its steps cannot be counted by its last step (run PBT with synch=True)")
        w["evaluations"] = w["rows"] if w["exploits"] or t not in said else said[t]
    return work


def worker_span(work: dict[str, dict], workers: int) -> tuple[int, int]:
    """``(steps, evaluations)`` of the busiest of ``workers`` workers when the trials run as Tune runs them: the
    generations one after another (a generation's trials wait for the last one before), each generation's trials
    in the order they were created (trial ids), each taken by the worker that has done least so far; steps and
    evaluations each scheduled this way on their own. One trial per generation puts all of a chain's steps on
    one worker; ``P`` chains on ``P`` workers give each its chain's."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    span = [0, 0]
    for g in sorted({w["generation"] for w in work.values()}):
        trials = [work[t] for t in sorted(work) if work[t]["generation"] == g]
        for i, key in enumerate(("steps", "evaluations")):
            lanes = [0] * workers
            for w in trials:
                lanes[lanes.index(min(lanes))] += w[key]
            span[i] += max(lanes)
    return span[0], span[1]


def check_budget(arm: str, evaluations: list[dict], b: dict) -> dict:
    """Gradient steps and evaluations as the trials reported them (``trial_work``); raises if they are not the
    budget ``b``.

    ``b["kind"] == "compute"``: the steps and evaluations of all trials. ``"workers"``: those of the busiest of
    ``P`` workers (``worker_span``) against one chain's ``G*K`` steps and ``G*E`` evaluations. The PBT arm
    spends every step but evaluates a chain's start once, not at every ``K`` steps (its trials continue), plus
    once after each exploit: its evaluations must not exceed the budget's."""
    work = trial_work(evaluations)
    steps = sum(w["steps"] for w in work.values())
    n_evals = sum(w["evaluations"] for w in work.values())
    span_steps, span_evals = worker_span(work, b["population"])
    if b.get("kind", "compute") == "workers":
        got, want, what = (span_steps, span_evals), (b["worker_steps"], b["worker_evaluations"]), "per worker"
    else:
        got, want, what = (steps, n_evals), (b["gradient_steps"], b["evaluations"]), "in all"
    want = (0 if arm == "llm" else want[0], want[1])
    evals_ok = got[1] <= want[1] if arm == "pbt" else got[1] == want[1]
    if got[0] != want[0] or not evals_ok:
        raise AssertionError(f"arm {arm}: trials reported {got[0]} gradient steps and {got[1]} evaluations {what}; "
                             f"the budget is {want[0]} and {'at most ' if arm == 'pbt' else ''}{want[1]} "
                             f"({len(work)} trials, {b.get('kind', 'compute')} budget)")
    return {"gradient_steps": steps, "n_evaluations": n_evals, "trials": len(work),
            "worker_steps": span_steps, "worker_evaluations": span_evals,
            "exploits": sum(len(w["exploits"]) for w in work.values()),
            "reused_scores": sum(e.get("reused", False) for e in evaluations),
            "screened": sum(e.get("screen", False) for e in evaluations) + sum(
                str(e.get("start") or "").startswith("candidate") for e in evaluations)}


def best_so_far(evaluations: list[dict], b: dict, axis: str) -> list[tuple[float, float]]:
    """Best validation accuracy so far, as ``(x, value)`` points.

    Phases of a generation run side by side, so an evaluation at step ``s`` of generation ``g`` lies at
    ``x = g*P*K + P*s`` gradient steps (``axis="steps"``) or ``g*P*E + P*(s/k + 1)`` evaluations
    (``axis="evals"``). The LLM-only arm's generation ``g`` (0 steps) is placed where the other arms'
    generation ``g`` starts (``g*P*K``) and, on the evaluation axis, where it ends."""
    p, k, e, every = b["population"], b["steps_per_phase"], b["evals_per_phase"], b["eval_every"]
    width = p * k
    zero_step = all(q["step"] == 0 for q in evaluations)
    gen_steps: dict[int, int] = {}
    for r in evaluations:
        gen_steps[r["generation"]] = max(gen_steps.get(r["generation"], 0), r["step"])
    scheduled = any(r.get("screen") or r.get("reused") for r in evaluations) or (
        len(gen_steps) > 1 and gen_steps.get(0) == 0 and not zero_step)
    points = []
    if scheduled:  # generations of different lengths: place points by the steps and evaluations before them
        offset_steps = {g: p * sum(gen_steps[h] for h in gen_steps if h < g) for g in gen_steps}
        spent = 0
        for r in evaluations:
            spent += 0 if r.get("reused") else 1
            x = offset_steps[r["generation"]] + p * r["step"] if axis == "steps" else spent
            points.append((x, r["val_acc"]))
    else:
        for r in evaluations:
            g, s = r["generation"], r["step"]
            if axis == "steps":
                x = g * width + p * s
            else:
                x = (g + 1) * p * e if zero_step else g * p * e + p * (s // every + 1)
            points.append((x, r["val_acc"]))
    points.sort()
    curve, best = [], -math.inf
    for x, v in points:
        best = max(best, v)
        if curve and curve[-1][0] == x:
            curve[-1] = (x, best)
        else:
            curve.append((x, best))
    end = b["gradient_steps"] if axis == "steps" else b["evaluations"]
    if curve and curve[-1][0] < end:
        curve.append((end, curve[-1][1]))
    return curve


def curve_budget(b: dict) -> dict:
    """The budget ``best_so_far`` places a run's evaluations in: ``b`` itself (steps and evaluations of all
    trials), or under the workers budget one worker's (``G*K`` steps, ``G*E`` evaluations; the trials of a
    generation side by side on their workers)."""
    if b.get("kind", "compute") != "workers":
        return b
    return {**b, "population": 1, "gradient_steps": b["worker_steps"], "evaluations": b["worker_evaluations"]}
