"""Step times interpolated from a measured profile: ``--sim-profile dynamo:DIR``.

DIR is what Dynamo's profiler (or ``ppd profile``) writes:
``selected_prefill_interpolation/raw_data.npz`` (TTFT over ISL at concurrency 1),
``selected_decode_interpolation/raw_data.npz`` (ITL over KV usage and context)
and, when present, our ``selected_cached_context/raw_data.npz`` (TTFT of an
append of m fresh tokens onto L cached ones). As Dynamo's Mocker does, the sim
then times its steps by interpolating those measurements instead of a roofline:

- an extend step: g(new tokens of the whole batch) + for each chunk, the extra
  its cached prefix costs: T_cached(m, L) - T_cached(m, 0) inside the cached
  table, else max(g(L + m) - g(L) - g(m), 0); g(x) = TTFT(x) less the
  per-request overhead, so a long prompt split into chunks costs its measured TTFT;
- a decode step: ITL at (batch size, mean context). Dynamo's decode points are
  (KV usage, context) = (n x context / pool, context) for concurrency n, so each
  measured context is a row of ITL over n; the step interpolates linearly in n
  within the rows around its mean context, then between those rows (linear
  beyond the first and last point of either axis).

No step is ever faster than the roofline floor of its work. Batched appends cost
the sum of their prefix extras (the tables hold concurrency-1 points only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.costmodel import EFFICIENCY_CAPS, CostModel, CostProfile, Extend
from pytest_ppd.specs import GpuSpec, ModelSpec

PREFIX = "dynamo:"
PREFILL_NPZ = Path("selected_prefill_interpolation") / "raw_data.npz"
DECODE_NPZ = Path("selected_decode_interpolation") / "raw_data.npz"
CACHED_NPZ = Path("selected_cached_context") / "raw_data.npz"


def _arrays(directory: Path, npz: Path, fallback: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The npz as Dynamo's loaders read it, else its JSON fallback (Dynamo's order)."""
    try:
        if (directory / npz).is_file():
            with np.load(directory / npz) as data:
                return {k: np.asarray(data[k], dtype=float) for k in keys}
        if (directory / fallback).is_file():
            data = json.loads((directory / fallback).read_text())
            return {k: np.asarray(data[k], dtype=float) for k in keys}
    except (KeyError, ValueError, OSError) as exc:
        what = str(exc).strip("'")
        raise ConfigError(f"--sim-profile {PREFIX}{directory}: {npz} lacks or mangles a key ({what}); "
                          f"it needs {', '.join(keys)} (ppd profile or Dynamo's profiler writes them)") from None
    raise ConfigError(f"--sim-profile {PREFIX}{directory}: neither {npz} nor {fallback} is there; "
                      f"give a directory written by ppd profile or Dynamo's profiler")


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise linear through the points, extended linearly beyond the first and last."""
    if len(xs) == 1:
        return float(ys[0])
    if x < xs[0] or x > xs[-1]:
        i = 0 if x < xs[0] else len(xs) - 2
        return float(ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i]))
    return float(np.interp(x, xs, ys))


def _cell(axis: np.ndarray, value: float) -> int:
    """Index of the grid cell [axis[i], axis[i+1]] that holds value."""
    return int(min(max(int(np.searchsorted(axis, value)) - 1, 0), len(axis) - 2))


class TableCostModel(CostModel):
    """A CostModel whose step times come from a measured profile's tables (Dynamo's Mocker's approach)."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, directory: str | Path, profile: CostProfile | None = None,
                 tp_size: int = 1, attention_backend: str | None = None) -> None:
        super().__init__(model, gpu, profile, tp_size, attention_backend)
        self.directory = Path(directory)
        pre = _arrays(self.directory, PREFILL_NPZ, "prefill_raw_data.json", ("prefill_isl", "prefill_ttft"))
        order = np.argsort(pre["prefill_isl"])
        isl, ttft = pre["prefill_isl"][order], pre["prefill_ttft"][order] / 1e3 - self.profile.request_overhead_s
        if len(isl) < 2 or np.any(np.diff(isl) <= 0) or np.any(ttft <= 0):
            raise ConfigError(f"--sim-profile {PREFIX}{directory}: the prefill table needs 2+ distinct ISLs with "
                              "TTFT above the per-request overhead")
        self._isl, self._g = np.concatenate([[0.0], isl]), np.concatenate([[0.0], ttft])
        dec = _arrays(self.directory, DECODE_NPZ, "decode_raw_data.json",
                      ("x_kv_usage", "y_context_length", "z_itl", "max_kv_tokens"))
        self.max_kv_tokens = float(np.ravel(dec["max_kv_tokens"])[0])
        batch = np.round(dec["x_kv_usage"] * self.max_kv_tokens / dec["y_context_length"])
        self._rows: list[tuple[float, np.ndarray, np.ndarray]] = []  # (context, batch sizes, ITL s)
        for y in np.unique(dec["y_context_length"]):
            at = dec["y_context_length"] == y
            order = np.argsort(batch[at])
            self._rows.append((float(y), batch[at][order], dec["z_itl"][at][order] / 1e3))
        if not self._rows:
            raise ConfigError(f"--sim-profile {PREFIX}{directory}: the decode table holds no points")
        self._cached = self._load_cached()
        if self._cached is not None:  # the cached table's L = 0 row: more prefill points at small m
            ms, Ls, t = self._cached
            if Ls[0] == 0:
                fresh = {float(x): float(v) for x, v in zip(self._isl, self._g)}
                fresh.update({float(m): float(v) for m, v in zip(ms, t[0]) if np.isfinite(v)})
                self._isl, self._g = np.array(sorted(fresh)), np.array([fresh[k] for k in sorted(fresh)])
        floor = CostProfile(name="floor", c0_prefill_s=0.0, c0_decode_s=0.0, request_overhead_s=0.0,
                            launch_prefill_s=0.0, eager_decode_s=0.0, attn_tile_q=1,
                            **{k: cap for k, cap in EFFICIENCY_CAPS.items()})
        self._floor = CostModel(model, gpu, floor, tp_size, attention_backend)

    def _load_cached(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if not (self.directory / CACHED_NPZ).is_file():
            return None
        data = _arrays(self.directory, CACHED_NPZ, "cached_context.json", ("cached_m", "cached_L", "ttft_ms"))
        return data["cached_m"], data["cached_L"], data["ttft_ms"] / 1e3 - self.profile.request_overhead_s

    def g(self, tokens: float) -> float:
        """Seconds a prompt of `tokens` fresh tokens costs the engine (linear beyond the last point)."""
        if tokens <= self._isl[-1]:
            return float(np.interp(tokens, self._isl, self._g))
        slope = (self._g[-1] - self._g[-2]) / (self._isl[-1] - self._isl[-2])
        return float(self._g[-1] + slope * (tokens - self._isl[-1]))

    def _cached_s(self, m: float, L: float) -> float | None:
        """Bilinear in the cached-context table where all four corners were measured; None outside it."""
        if self._cached is None:
            return None
        ms, Ls, t = self._cached
        if not (ms[0] <= m <= ms[-1] and Ls[0] <= L <= Ls[-1]):
            return None
        i, j = _cell(Ls, L), _cell(ms, m)
        corners = t[i:i + 2, j:j + 2]
        if corners.shape != (2, 2) or not np.all(np.isfinite(corners)):
            return None
        u, v = (L - Ls[i]) / (Ls[i + 1] - Ls[i]), (m - ms[j]) / (ms[j + 1] - ms[j])
        top, bottom = corners[0, 0] * (1 - v) + corners[0, 1] * v, corners[1, 0] * (1 - v) + corners[1, 1] * v
        return float(top * (1 - u) + bottom * u)

    def _prefix_extra(self, c: Extend) -> float:
        if c.prefix <= 0:
            return 0.0
        with_prefix, without = self._cached_s(c.new, c.prefix), self._cached_s(c.new, 0)
        if with_prefix is not None and without is not None:
            return with_prefix - without
        # a prefix only adds work: where the coarse prefill table makes the difference negative, it adds none
        return max(self.g(c.prefix + c.new) - self.g(c.prefix) - self.g(c.new), 0.0)

    def extend_time(self, chunks: Iterable[Extend]) -> float:
        chunks = list(chunks)
        step = self.g(sum(c.new for c in chunks)) + sum(self._prefix_extra(c) for c in chunks)
        return max(step * self.profile.slowdown, self._floor.extend_time(chunks))

    def decode_time(self, contexts: Iterable[int], eager: bool = False) -> float:
        contexts = list(contexts)
        if not contexts:
            return self.profile.c0_decode_s * self.profile.slowdown
        n, y = float(len(contexts)), float(np.mean(contexts))
        ys = np.array([row[0] for row in self._rows])
        per_row = np.array([_interp(row[1], row[2], n) for row in self._rows])
        step = _interp(ys, per_row, y)  # measured rows hold eager (above-graph) batches as they ran
        return max(step * self.profile.slowdown, self._floor.decode_time(contexts))


def describe(directory: str | Path) -> dict[str, Any]:
    """What a dynamo: profile holds, for logs and headers."""
    d = Path(directory)
    return {"prefill": (d / PREFILL_NPZ).is_file() or (d / "prefill_raw_data.json").is_file(),
            "decode": (d / DECODE_NPZ).is_file() or (d / "decode_raw_data.json").is_file(),
            "cached_context": (d / CACHED_NPZ).is_file()}
