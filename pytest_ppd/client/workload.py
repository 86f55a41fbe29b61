"""Exact token ids: deterministic contexts, and appends that were never sent before.

Conversation c of a point has a context of L ids fixed by (seed, point, c). The
append of round r is m ids whose first id is unique to (round, conversation),
so no append can match anything already cached (a previous round's append, a
warm-up output): the server has to compute every one of its m tokens.

    wl = Workload(GridPoint(4, 1024, 32), vocab_size=128256, seed=0)
    wl.context(0)          # 1024 ids
    wl.append(0, round_=2) # 32 fresh ids
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pytest_ppd.grid import GridPoint

_LOW = 1000  # keep clear of special/control ids at the bottom of every vocab


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Workload:
    point: GridPoint
    vocab_size: int
    seed: int = 0
    path: str = ""

    def __post_init__(self) -> None:
        if self.vocab_size < 2 * _LOW:
            raise ValueError(f"vocab_size {self.vocab_size} too small for exact-token workloads")

    @property
    def _high(self) -> int:
        return self.vocab_size - 1

    def context(self, conv: int) -> list[int]:
        """The L cached tokens of conversation `conv` (its first id differs between conversations)."""
        if self.point.L == 0:
            return []
        ids = _rng("ctx", self.seed, self.path, self.point, conv).integers(_LOW, self._high, self.point.L)
        offset = int(_rng("first", self.seed, self.path, self.point).integers(0, self._high - _LOW))
        ids[0] = _LOW + (offset + conv) % (self._high - _LOW)
        return ids.tolist()

    def append(self, conv: int, round_: int) -> list[int]:
        """m tokens new for this round and conversation."""
        ids = _rng("app", self.seed, self.path, self.point, conv, round_).integers(_LOW, self._high, self.point.m)
        # The first id is unique per (round, conversation): never a cached continuation.
        span = self._high - _LOW
        ids[0] = _LOW + (round_ * self.point.bs + conv + 1 + self.seed * 7919) % span
        return ids.tolist()

    def prompt(self, conv: int, round_: int) -> list[int]:
        return self.context(conv) + self.append(conv, round_)
