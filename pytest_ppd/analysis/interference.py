"""Interference of an append on the decode side: how much the p99 inter-token latency of
background decode streams grows while the append runs there.

    score = delta / (delta + 500 ms)          (seed 000: delta > 500 ms means score > 0.5)

Pure functions over time stamps; the measurement lives in client/interference.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HALF_SCORE_MS = 500.0


def interference_score(delta_ms: float) -> float:
    """delta / (delta + 500 ms); 0 for no increase."""
    if not np.isfinite(delta_ms):
        raise ValueError(f"delta must be finite, got {delta_ms}")
    d = max(delta_ms, 0.0)
    return d / (d + HALF_SCORE_MS)


@dataclass(frozen=True)
class Interference:
    p99_before_ms: float
    p99_during_ms: float
    n_before: int
    n_during: int

    @property
    def delta_ms(self) -> float:
        return self.p99_during_ms - self.p99_before_ms

    @property
    def score(self) -> float:
        return interference_score(self.delta_ms)


def split_itls(streams_ns: list[list[int]], start_ns: int, end_ns: int) -> tuple[list[float], list[float]]:
    """ITLs (ms) of each stream, split into those entirely before start and those overlapping [start, end]."""
    before, during = [], []
    for stamps in streams_ns:
        for a, b in zip(stamps, stamps[1:]):
            gap = (b - a) / 1e6
            if b <= start_ns:
                before.append(gap)
            elif a <= end_ns:
                during.append(gap)
    return before, during


def measure_from_stamps(streams_ns: list[list[int]], start_ns: int, end_ns: int) -> Interference:
    before, during = split_itls(streams_ns, start_ns, end_ns)
    if len(before) < 5 or not during:
        raise ValueError(f"too few inter-token gaps to compare ({len(before)} before, {len(during)} during)")
    return Interference(float(np.percentile(before, 99)), float(np.percentile(during, 99)), len(before), len(during))
