"""Statistics over seeds that mean what they say.

* :func:`summarize`: mean +- sample standard deviation and a 95% interval of the mean over seeds. For a
  bounded metric (accuracy in %, the default) the Student-t interval is computed on the logit scale
  and mapped back, so it never leaves [0, 100] (99.56 +- 0.22 over 3 seeds gives [98.6, 99.9], not the
  plain t interval's [99.00, 100.11]); in the middle of the range it is close to the plain interval.
* :func:`paired_ttest`: the paired t-test of a variant against the baseline trained with the same seeds.
* :func:`detectable_difference`: the smallest true mean difference the paired test would detect with
  80% power, given the number of seeds and the spread of the paired differences (noncentral t). A
  difference below it that reads "not significant" means "too small for this study to see", not "none".
"""

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


def _t_interval(vals: list[float], confidence: float) -> tuple[float, float, float, float]:
    from scipy import stats  # slow import

    n = len(vals)
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarize(values, confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 100.0)) -> Summary:
    """Mean, sample standard deviation and a Student-t confidence interval of the mean.

    With ``bounds`` (default: a percentage), the interval is the t interval of the logits of
    ``(v - low) / (high - low)``, mapped back through the logistic function: it stays inside the
    bounds. Values on a bound are moved 1e-6 of the range inside it first. ``bounds=None`` gives the
    plain ``mean +- t * s / sqrt(n)``. With one value the std and interval are NaN.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(vals) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    mean, std, lo, hi = _t_interval(vals, confidence)
    if bounds is None:
        return Summary(n, mean, std, lo, hi)
    a, b = bounds
    eps = 1e-6
    p = [min(max((v - a) / (b - a), eps), 1 - eps) for v in vals]
    _, _, llo, lhi = _t_interval([math.log(q / (1 - q)) for q in p], confidence)
    back = lambda x: a + (b - a) / (1 + math.exp(-x))  # noqa: E731 - the logistic function, rescaled
    return Summary(n, mean, std, back(llo), back(lhi))


def paired_ttest(a: dict, b: dict) -> tuple[float, float, int]:
    """Paired t-test of ``a`` against ``b``, both ``{seed: value}``, over the seeds both have.

    Returns ``(mean difference a - b, two-sided p-value, number of pairs)``; the p-value is NaN with
    fewer than two pairs or when every difference is the same.
    """
    from scipy import stats  # slow import

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


def paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` for a true mean difference ``effect``,
    ``n`` pairs whose differences have standard deviation ``sd`` (noncentral t, exact)."""
    from scipy import stats  # slow import

    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / sd * math.sqrt(n)
    if nc == 0:  # scipy's noncentral t is NaN at noncentrality 0; the central t is the same distribution
        return alpha
    upper, lower = stats.nct.sf(crit, df, abs(nc)), stats.nct.cdf(-crit, df, abs(nc))
    # scipy returns NaN for some far-tail values (e.g. cdf(-4.3, 2, 13.8)); that tail is then ~0.
    return float((0.0 if math.isnan(upper) else upper) + (0.0 if math.isnan(lower) else lower))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean difference the two-sided paired t-test detects with ``power`` at level ``alpha``.

    ``sd``: standard deviation of the paired differences; ``n``: number of pairs. NaN with fewer than
    two pairs or no spread. With many pairs it tends to ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``
    (2.80 sd / sqrt(n)); with 3 pairs it is 5.65 sd / sqrt(3) (t with 2 degrees of freedom).
    """
    from scipy.optimize import brentq  # slow import

    if n < 2 or not sd > 0 or not math.isfinite(sd):
        return math.nan
    f = lambda d: paired_power(d, sd, n, alpha) - power  # noqa: E731
    hi = sd
    while f(hi) < 0:
        hi *= 2
    return float(brentq(f, 0.0, hi, xtol=1e-10 * sd))


def paired_difference_sd(a: dict, b: dict) -> float:
    """Sample standard deviation of the paired differences ``a[s] - b[s]`` over the shared seeds (NaN if < 2)."""
    seeds = sorted(set(a) & set(b))
    d = [float(a[s]) - float(b[s]) for s in seeds]
    if len(d) < 2:
        return math.nan
    m = math.fsum(d) / len(d)
    return math.sqrt(math.fsum((x - m) ** 2 for x in d) / (len(d) - 1))
