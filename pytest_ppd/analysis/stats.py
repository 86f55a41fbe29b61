"""Summary statistics of repeated rounds, with a 95% CI of the median.

The CI is a percentile bootstrap of the median (fixed seed: deterministic), the
usual choice when rounds are few and their distribution unknown::

    >>> s = summarize([10.0, 10.2, 9.9, 10.1])
    >>> s.ci_low <= s.median <= s.ci_high
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p10: float
    p90: float
    mean: float
    stdev: float
    ci_low: float
    ci_high: float

    @property
    def ci_rel_width(self) -> float:
        """(ci_high - ci_low) / median: what --ppd-ci bounds."""
        return (self.ci_high - self.ci_low) / self.median if self.median > 0 else math.inf


def median_ci(samples: list[float] | np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median."""
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("median_ci needs at least one sample")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(x, size=(BOOTSTRAP_RESAMPLES, x.size), replace=True), axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def summarize(samples: list[float]) -> Summary:
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one sample")
    lo, hi = median_ci(x)
    return Summary(
        n=int(x.size), median=float(np.median(x)), p10=float(np.quantile(x, 0.1)),
        p90=float(np.quantile(x, 0.9)), mean=float(x.mean()),
        stdev=float(x.std(ddof=1)) if x.size > 1 else 0.0, ci_low=lo, ci_high=hi,
    )


def one_sided_p(greater: np.ndarray, than: np.ndarray) -> float:
    """P-value of `greater` being larger than `than`: a one-sided Welch t-test.

    Samples without spread (virtual time repeats a latency exactly) have no noise to
    weigh: then the medians decide, p = 0 or 1. Fewer than two samples on a side: likewise.
    """
    from scipy import stats

    greater, than = np.asarray(greater, float), np.asarray(than, float)
    if greater.size < 2 or than.size < 2 or (np.ptp(greater) == 0 and np.ptp(than) == 0):
        return 0.0 if np.median(greater) > np.median(than) else 1.0
    result = stats.ttest_ind(greater, than, equal_var=False, alternative="greater")
    return float(result.pvalue) if np.isfinite(result.pvalue) else 1.0
