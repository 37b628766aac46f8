"""A mean and its 95% confidence interval, for the per-round ratios of a benchmark.

Theory of operation: each round of a paired benchmark yields one ratio (an arm against the
baseline measured in the same round). Rounds are independent repeats, so the ratios' mean has
Student's t interval: mean +- t(0.975, n-1) * stdev / sqrt(n). The t quantiles for small n are
tabulated (no SciPy here); from 31 rounds on the normal's 1.96 is within 2% of t's.
"""

from __future__ import annotations

import math
import statistics

# t(0.975, df) for df = 1..30 (two-sided 95%).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """Student's t quantile at 0.975 for `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError("a confidence interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its 95% confidence interval."""
    mean = statistics.fmean(values)
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half
