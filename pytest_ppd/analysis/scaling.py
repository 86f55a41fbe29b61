"""Scaling exponents: the slope of log T on log x, with a bootstrap 95% CI.

    >>> fit = fit_exponent([32, 32, 512, 512], [20.0, 21.0, 80.0, 82.0])
    >>> round(fit.exponent, 2)
    0.5

The fit goes through the median at each x; the CI resamples rounds within each x
(stratified) and refits, so it reflects run-to-run noise. ``endpoint_slope`` is
seed 000's two-point slope, kept for comparison.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class ExponentFit:
    exponent: float
    ci_low: float
    ci_high: float
    intercept: float
    n: int
    endpoint_slope: float

def _slope(logx: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logx, logy, 1)
    return float(slope), float(intercept)


def endpoint_slope(xs: Sequence[float], medians: Sequence[float] | np.ndarray) -> float:
    """log(T_last / T_first) / log(x_last / x_first) over the sorted x values."""
    pairs = sorted(zip(xs, medians))
    (x0, t0), (x1, t1) = pairs[0], pairs[-1]
    return math.log(t1 / t0) / math.log(x1 / x0)


def fit_exponent(ms: Sequence[float], latencies_ms: Sequence[float], *, level: float = 0.95,
                 seed: int = 0) -> ExponentFit:
    """Least-squares slope of log median latency on log m, with a stratified bootstrap CI."""
    x = np.asarray(ms, dtype=float)
    y = np.asarray(latencies_ms, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"ms and latencies_ms differ in length ({x.size} vs {y.size})")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("fit_exponent needs positive, finite m and latencies")
    groups: dict[float, list[float]] = defaultdict(list)
    for xi, yi in zip(x, y):
        groups[float(xi)].append(float(yi))
    if len(groups) < 2:
        raise ValueError("fit_exponent needs at least two distinct m values")
    keys = sorted(groups)
    # The slope through the per-m medians: one bad round (a cold start, a GC pause) among ten moves a
    # median little but a least-squares fit over every sample a lot, and baselines compare exponents.
    logk = np.log(np.asarray(keys))
    medians = np.array([float(np.median(groups[k])) for k in keys])
    slope, intercept = _slope(logk, np.log(medians))
    # The slope with fixed x is linear in log y, so all resampled slopes are one matmul.
    rng = np.random.default_rng(seed)
    centered = logk - logk.mean()
    w = centered / float(centered @ centered)
    columns = []
    for k in keys:
        samples = np.asarray(groups[k])
        picks = rng.integers(0, samples.size, (BOOTSTRAP_RESAMPLES, samples.size))
        columns.append(np.log(np.median(samples[picks], axis=1)))
    resampled = np.stack(columns, axis=1)
    boots = resampled @ w
    alpha = (1 - level) / 2
    # Two ways of computing one slope differ in the last bits when every round is identical (virtual
    # time): a CI of width zero must still contain its estimate.
    low, high = float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))
    return ExponentFit(
        exponent=slope, ci_low=min(low, slope), ci_high=max(high, slope),
        intercept=intercept, n=int(x.size), endpoint_slope=endpoint_slope(keys, medians),
    )
