"""The BS x L x m grid: points, presets, the `bs=..;L=..;m=..` syntax and readable ids.

    >>> [p.id for p in parse_grid("bs=1,8;L=4096;m=32")]
    ['bs1-L4096-m32', 'bs8-L4096-m32']
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from pytest_ppd.errors import ConfigError


@dataclass(frozen=True, order=True)
class GridPoint:
    """One measurement point: BS conversations, each appending m tokens to L cached ones."""

    bs: int
    L: int
    m: int

    @property
    def id(self) -> str:
        return f"bs{self.bs}-L{self.L}-m{self.m}"

    @property
    def cache_rate(self) -> float:
        """r = L / (L + m)."""
        return self.L / (self.L + self.m)

    @property
    def total_tokens(self) -> int:
        """Pool tokens the point needs at once: BS x (L + m)."""
        return self.bs * (self.L + self.m)


def _product(bs: list[int], L: list[int], m: list[int]) -> tuple[GridPoint, ...]:
    return tuple(GridPoint(b, l_, m_) for b, l_, m_ in itertools.product(bs, L, m))


PRESETS: dict[str, tuple[GridPoint, ...]] = {
    # a handful of points: seconds on the sim
    "smoke": _product([1, 4], [1024], [32, 512]),
    # every regime at a few points
    "quick": _product([1, 8, 32], [1024, 4096], [32, 512, 2048]),
    # seed 000: 6 x 4 x 7 = 168
    "full": _product([1, 4, 8, 16, 32, 64], [1024, 4096, 8192, 16384],
                     [32, 128, 512, 1024, 2048, 4096, 8192]),
    # the calibration design: 12 points that span the regimes (ppd calibrate fits a profile from them)
    "calibrate": _product([1, 16], [1024, 16384], [32, 512, 4096]),
    # seed 002: 12 m x 6 L at BS=1
    "seed002": _product([1], [512, 1024, 2048, 4096, 8192, 16384],
                        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]),
}

GRID_SYNTAX = "a preset (smoke, quick, full, calibrate, seed002) or 'bs=1,8;L=4096;m=32,512'"
_AXES = {"bs": "bs", "l": "L", "m": "m"}


def parse_grid(text: str) -> tuple[GridPoint, ...]:
    """A preset name or an explicit `bs=..;L=..;m=..` product; raises ConfigError naming the syntax."""
    spec = text.strip()
    if spec in PRESETS:
        return PRESETS[spec]
    if "=" not in spec:
        raise ConfigError(f"'{text}' is not a grid; use {GRID_SYNTAX}")
    axes: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, values = part.partition("=")
        axis = _AXES.get(key.strip().lower())
        if not sep or axis is None:
            raise ConfigError(f"'{part}' in grid '{text}' is not an axis; use {GRID_SYNTAX}")
        if axis in axes:
            raise ConfigError(f"axis {axis} appears twice in grid '{text}'; use {GRID_SYNTAX}")
        try:
            nums = [int(v) for v in re.split(r"[,\s]+", values.strip()) if v]
        except ValueError:
            raise ConfigError(f"'{values}' in grid '{text}' is not a list of integers; use {GRID_SYNTAX}") from None
        if not nums:
            raise ConfigError(f"axis {axis} in grid '{text}' has no values; use {GRID_SYNTAX}")
        low = 0 if axis == "L" else 1
        bad = [n for n in nums if n < low]
        if bad:
            raise ConfigError(f"grid '{text}': {axis}={bad[0]} must be >= {low}")
        if len(set(nums)) != len(nums):
            raise ConfigError(f"grid '{text}': duplicate value in {axis}; list each value once")
        axes[axis] = nums
    missing = [a for a in ("bs", "L", "m") if a not in axes]
    if missing:
        raise ConfigError(f"grid '{text}' lacks {', '.join(missing)}; use {GRID_SYNTAX}")
    return _product(axes["bs"], axes["L"], axes["m"])

