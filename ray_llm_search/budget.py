"""Limits on what the mentor may spend, and what a configured search can spend at most (a dry run).

``LLMSearch(llm_budget={"calls": 10, "tokens": 50_000, "cost": 2.0, "prices": {"prompt": 0.15,
"completion": 0.60}})``: prices are per 1,000 tokens (any currency); ``cost`` needs them. Spending is read
from the LLM's own ``usage`` counter (calls, prompt and completion tokens; answers replayed by the cache or
the crash journal cost nothing). A round asks only while every limit still has room; once one is reached,
this and every later round is filled from the pool (status ``"budget"`` in ``generations.jsonl``, a warning in
the log, ``llm_search/llm_budget_reached`` in TensorBoard). One ask may overshoot a token or cost limit by
its own size: its tokens are known only when it returns.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

LIMITS = ("calls", "tokens", "cost")


@dataclass(frozen=True)
class LLMBudget:
    calls: int | None = None
    tokens: int | None = None
    cost: float | None = None
    prompt_price: float | None = None  # per 1,000 prompt tokens
    completion_price: float | None = None  # per 1,000 completion tokens

    @classmethod
    def parse(cls, value) -> LLMBudget | None:
        """An ``LLMBudget`` from ``None``, an ``LLMBudget`` or a dict (see the module docstring)."""
        if value is None or isinstance(value, LLMBudget):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"llm_budget must be a dict like {{'calls': 10, 'tokens': 50000}}, got {value!r}")
        unknown = set(value) - set(LIMITS) - {"prices"}
        if unknown:
            raise ValueError(f"llm_budget has unknown keys {sorted(unknown)}; use {list(LIMITS)} and 'prices'")
        for key in LIMITS:
            v = value.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0
                                  or not math.isfinite(v)):
                raise ValueError(f"llm_budget[{key!r}] must be a number >= 0, got {v!r}")
        prices = value.get("prices") or {}
        if not isinstance(prices, dict) or set(prices) - {"prompt", "completion"}:
            raise ValueError(f"llm_budget['prices'] must be {{'prompt': per_1k, 'completion': per_1k}}, got {prices!r}")
        for key, v in prices.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"llm_budget['prices'][{key!r}] must be a number >= 0 per 1,000 tokens, got {v!r}")
        if value.get("cost") is not None and set(prices) != {"prompt", "completion"}:
            raise ValueError("llm_budget['cost'] needs prices for both kinds of tokens: "
                             "'prices': {'prompt': per_1k, 'completion': per_1k}")
        calls = value.get("calls")
        if calls is not None and int(calls) != calls:
            raise ValueError(f"llm_budget['calls'] must be a whole number, got {calls!r}")
        return cls(calls=None if calls is None else int(calls), tokens=value.get("tokens"), cost=value.get("cost"),
                   prompt_price=prices.get("prompt"), completion_price=prices.get("completion"))

    def spent(self, usage) -> dict:
        """``{"calls", "tokens"[, "cost"]}`` from an LLM's ``usage`` counter."""
        usage = usage or {}
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        out = {"calls": int(usage.get("calls", 0)), "tokens": prompt + completion}
        if self.prompt_price is not None and self.completion_price is not None:
            out["cost"] = round((prompt * self.prompt_price + completion * self.completion_price) / 1000.0, 6)
        return out

    def reached(self, usage) -> str | None:
        """The first limit with no room left, as ``"calls 10 of 10"``; ``None`` while every one has room."""
        spent = self.spent(usage)
        for key in LIMITS:
            limit = getattr(self, key)
            if limit is not None and spent.get(key, 0) >= limit:
                return f"{key} {spent[key]:g} of {limit:g}"
        return None

    def limits(self) -> dict:
        return {k: getattr(self, k) for k in LIMITS if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        """The dict ``parse`` takes."""
        prices = {k: v for k, v in (("prompt", self.prompt_price), ("completion", self.completion_price))
                  if v is not None}
        return {**self.limits(), **({"prices": prices} if prices else {})}


# -- what a configured search can spend at most --------------------------------------------------------------


def dry_run(search) -> dict:
    """What ``search`` (an ``LLMSearch``) would ask of its LLM, without asking: the meta-prompt of round 1
    (generation 0's scores are not known before it runs, so the seed prompts are shown with placeholder scores of
    0), the rounds, and upper bounds on calls and tokens (every round asking ``1 + llm_reasks`` times, each ask
    retried as often as the LLM retries, every meta-prompt as long as ``top_k`` trajectories of prompts at the
    mentor's length cap can make it, every reply at the LLM's token cap). Tokens are bounded by the meta-prompt's
    UTF-8 bytes plus 64 for a chat template: no tokenizer gives more than one token per byte of text. ``None``
    where the LLM has no token cap (``max_tokens`` / ``max_new_tokens``)."""
    rounds = [] if search.proposals == "perturb" else _round_sizes(search)
    prompt_bound = max((len(_longest_meta_prompt(search, n).encode("utf-8")) + 64 for n in rounds), default=0)
    completion = [_completion_cap(search, n) for n in rounds]
    max_calls = len(rounds) * (1 + search.llm_reasks) * (1 + int(getattr(search.llm, "retries", 0) or 0))
    per_call = max(completion, default=0) if None not in completion else None
    out = {"rounds": len(rounds), "candidates_per_round": rounds, "max_calls": max_calls,
           "max_prompt_tokens_per_call": prompt_bound, "max_completion_tokens_per_call": per_call,
           "meta_prompt": _first_meta_prompt(search, rounds[0] if rounds else 1)}
    out["max_tokens"] = None if per_call is None else max_calls * (prompt_bound + per_call)
    budget = search.llm_budget
    if budget is not None and None not in (budget.prompt_price, budget.completion_price) and per_call is not None:
        out["max_cost"] = round(max_calls * (prompt_bound * budget.prompt_price + per_call * budget.completion_price)
                                / 1000.0, 6)
    if budget is not None:
        out["llm_budget"] = budget.limits()
    return out


def _round_sizes(search) -> list[int]:
    """Candidates asked in each LLM round of the design (generations with new starts or screened candidates)."""
    rounds = []
    for g in range(1, search.generations):
        plan = search._plan(g)
        slots = plan["screen"] * plan["elites"]
        new_starts = plan["population"] - plan["elites"]
        if new_starts + slots > 0:
            rounds.append(search.candidates_per_round or new_starts + 2 * slots)
    return rounds


def _first_meta_prompt(search, n: int) -> str:
    from ray_llm_search.pool import Evaluation, Trajectory

    seeds = [Trajectory(f"seed{i}", 0, "seed", text, evaluations=[Evaluation(0, text, 0.0, 0.0)])
             for i, text in enumerate(search.seed_prompts)]
    style, mentor = search.meta_prompt_style, search.mentor
    if search.mentor_scores in ("text", "descent"):  # "descent" shows text scores before any descent
        return mentor.build_scored([t.evaluations[0] for t in seeds][: max(search.top_k, 12)], n, style)
    return mentor.build(seeds[: search.top_k], n, style)


def _long(i: int, s: int) -> str:
    """A distinct text (the mentor shows a text once) at the mentor's clip of 160 characters."""
    return f"{i:03d} {s:03d} " + "w" * 152


def _longest_meta_prompt(search, n: int) -> str:
    """The longest meta-prompt the search may send asking for ``n`` candidates."""
    from ray_llm_search.pool import Descent, Evaluation, Trajectory

    style, mentor, shown = search.meta_prompt_style, search.mentor, max(search.top_k, 12)  # as _start_round shows
    scored = mentor.build_scored([Evaluation(0, _long(i, 0), -1e9, -1e9) for i in range(shown)], n, style)
    if search.mentor_scores == "descent":  # the longer of the two meta-prompts it may send
        return max(scored, mentor.build_descent([Descent(Evaluation(0, _long(i, 0), -1e9, -1e9),
                                                         Evaluation(10**9, _long(i, 1), -1e9, -1e9), 10**9)
                                                 for i in range(shown)], n, style), key=len)
    if search.mentor_scores == "text":
        return scored
    k = mentor.points_per_trajectory
    widest = [Trajectory(f"w{i}", 0, "seed", _long(i, k),
                         evaluations=[Evaluation(s, _long(i, s), -1e9, -1e9) for s in range(k)])
              for i in range(search.top_k)]
    return mentor.build(widest, n, style)


def _completion_cap(search, n: int) -> int | None:
    llm = search.llm
    if getattr(llm, "max_tokens", None):  # one reply (chat endpoints)
        return int(llm.max_tokens)
    per = getattr(llm, "max_new_tokens", None)
    if not per:
        return None
    if search.meta_prompt_style == "completion":  # one sampled continuation per candidate
        return int(per) * n
    return max(int(per), 16 * n)
