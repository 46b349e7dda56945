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
