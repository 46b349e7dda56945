"""The one statistics helper of the project's tables: a mean over seeds with its two-sided Student-t interval.

Every interval the comparison (``compare.paired_table``), the selection study (``selection``) and the tables of
``examples/RESULTS.md`` print comes from here, with the quantile from ``scipy.stats.t`` (n = 5 seeds: 2.776,
n = 10: 2.262), not from a hand-written table.

Example:
    >>> mean, half = t_interval([0.01, 0.03, -0.02, 0.04, 0.00])   # 0.012 and 2.776 * 0.0239 / sqrt(5)
    >>> mean_ci([0.01, 0.03, -0.02, 0.04, 0.00])
    '+0.012 ± 0.030'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["mean_ci", "t_interval", "t_quantile"]


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """The two-sided ``confidence`` quantile of Student's t for a mean of ``n`` values (``n - 1`` degrees of
    freedom): ``t.ppf((1 + confidence) / 2, n - 1)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"a t-interval needs n >= 2 values, got {n!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from scipy import stats

    return float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """``(mean, half-width)`` of the two-sided t-interval of the mean of ``values`` (at least two finite values:
    the sample standard deviation over ``sqrt(n)``, times ``t_quantile``)."""
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"a t-interval needs finite values, got {values}")
    n = len(values)
    return statistics.mean(values), t_quantile(n, confidence) * statistics.stdev(values) / math.sqrt(n)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> str:
    """A table cell: ``"+0.012 ± 0.030"`` (signed mean ± half-width of the t-interval), the value alone for a
    single one, ``"-"`` for none."""
    values = list(values)
    if not values:
        return "-"
    if len(values) == 1:
        return f"{float(values[0]):+.3f}"
    mean, half = t_interval(values, confidence)
    return f"{mean:+.3f} ± {half:.3f}"
