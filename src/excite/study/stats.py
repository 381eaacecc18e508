"""Statistics over seeds: mean +- sample standard deviation, a Student-t 95% confidence interval,
and a paired t-test against the baseline trained with the same seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """``n`` values: mean, sample std (ddof=1), and the 95% confidence interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(values, confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation and the Student-t confidence interval ``mean +- t * s / sqrt(n)``."""
    from scipy import stats

    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(vals) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_ttest(a: dict, b: dict) -> tuple[float, float, int]:
    """Paired t-test of ``a`` against ``b``, both ``{seed: value}``, over the seeds both have.

    Returns ``(mean difference a - b, two-sided p-value, number of pairs)``; the p-value is NaN with
    fewer than two pairs or when every difference is the same.
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    if not d:
        return math.nan, math.nan, 0
    mean = sum(d) / len(d)
    # Equal differences up to float rounding (accuracies are multiples of 1/N, e.g. 99.556 - 99.333
    # and 99.778 - 99.556 differ in the 14th digit): zero variance, the t statistic is undefined.
    if len(d) < 2 or max(d) - min(d) <= 1e-9 * max(1.0, abs(mean)):
        return mean, math.nan, len(d)
    return mean, float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue), len(d)
