"""Exact token ids: deterministic contexts, and appends that were never sent before.

Conversation c has a context of L ids fixed by (seed, path, BS, L, c), so the
points of one (BS, L) row share contexts and need no re-warming. The first id
of every append is unique among all appends to those contexts: the points of a
row get disjoint blocks of ids (``slot`` = the point's index in its row, each
block ``rounds_cap x BS`` ids), and within a block (round, conversation) picks
one. So no append can match anything already cached; the server has to compute
every one of its m tokens.

    wl = Workload(GridPoint(4, 1024, 32), vocab_size=128256, seed=0)
    wl.context(0)          # 1024 ids
    wl.append(0, round_=2) # 32 fresh ids
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from pytest_ppd.errors import ConfigError
from pytest_ppd.grid import GridPoint

_LOW = 1000  # keep clear of special/control ids at the bottom of every vocab


def first_id_span(vocab_size: int) -> int:
    """How many distinct first ids appends can start with."""
    return vocab_size - 1 - _LOW


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Workload:
    point: GridPoint
    vocab_size: int
    seed: int = 0
    path: str = ""
    slot: int = 0  # index of this point among the points sharing its contexts
    rounds_cap: int = 64  # most rounds one point can take
    _contexts: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _context_json: dict[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.vocab_size < 2 * _LOW:
            raise ConfigError(f"vocab_size {self.vocab_size} too small for exact-token workloads; "
                              f"pick a model with a vocabulary of at least {2 * _LOW}")
        needed = (self.slot + 1) * self.rounds_cap * self.point.bs
        if needed > self._span:
            raise ConfigError(f"{needed} distinct first ids needed but the vocabulary offers {self._span}; "
                              "lower --ppd-max-reps or split the grid")

    @property
    def _span(self) -> int:
        return first_id_span(self.vocab_size)

    def _ids(self, n: int, *key: object) -> np.ndarray:
        return _rng(*key).integers(_LOW, self.vocab_size - 1, n)

    def context(self, conv: int) -> list[int]:
        """The L cached tokens of conversation `conv`; conversations differ from their first id."""
        if conv not in self._contexts:
            self._contexts[conv] = self._make_context(conv)
        return self._contexts[conv]

    def context_json(self, conv: int) -> str:
        """The context's ids as JSON array items (no brackets), encoded once per workload."""
        if conv not in self._context_json:
            self._context_json[conv] = json.dumps(self.context(conv), separators=(",", ":"))[1:-1]
        return self._context_json[conv]

    def _make_context(self, conv: int) -> list[int]:
        p = self.point
        if p.L == 0:
            return []
        ids = self._ids(p.L, "ctx", self.seed, self.path, p.bs, p.L, conv)
        offset = int(_rng("first", self.seed, self.path, p.bs, p.L).integers(0, self._span))
        ids[0] = _LOW + (offset + conv) % self._span
        return ids.tolist()

    def append(self, conv: int, round_: int) -> list[int]:
        """m tokens new for this point, round and conversation."""
        p = self.point
        if not 0 <= round_ < self.rounds_cap:
            raise ValueError(f"round {round_} outside 0..{self.rounds_cap - 1}")
        ids = self._ids(p.m, "app", self.seed, self.path, p, conv, round_)
        ids[0] = _LOW + (self.slot * self.rounds_cap + round_) * p.bs + conv
        return ids.tolist()

    def prompt(self, conv: int, round_: int) -> list[int]:
        return self.context(conv) + self.append(conv, round_)

    def prompt_json(self, conv: int, round_: int) -> str:
        """The prompt as a JSON array, reusing the context's encoding (cheap enough for big batches)."""
        app = json.dumps(self.append(conv, round_), separators=(",", ":"))[1:-1]
        ctx = self.context_json(conv)
        return f"[{ctx},{app}]" if ctx else f"[{app}]"
