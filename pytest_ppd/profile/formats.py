"""The files of a profile: Dynamo 1.6.1's, the Mocker's, and our cached-context table.

Layout of a profile directory (Dynamo's names where Dynamo has the data)::

    selected_prefill_interpolation/raw_data.npz   prefill_isl int64 (N,), prefill_ttft float64 ms (N,),
                                                  prefill_thpt_per_gpu float64 tokens/s/GPU (N,)
    selected_decode_interpolation/raw_data.npz    x_kv_usage, y_context_length, z_itl (ms), z_thpt_per_gpu
                                                  float64 (P,), one entry per (ISL, concurrency) point;
                                                  max_kv_tokens int64 (1,)
    prefill_raw_data.json / decode_raw_data.json  the same as JSON lists (the ConfigMap fallback; there
                                                  max_kv_tokens is a plain int)
    perf_data.npz                                 the Mocker's table, every array float64: prefill_isl (N,),
                                                  prefill_ttft_ms (N,), decode_active_kv_tokens (K,),
                                                  decode_context_length (C,), decode_itl (K, C) ms
    selected_cached_context/raw_data.npz          ours (CACHED_SCHEMA): cached_m int64 (M,), cached_L int64
                                                  (J,), ttft_ms float64 (J, M), NaN = clipped or unproven
    cached_context.json                           the same with per-point detail (schema in the file)

Readers follow Dynamo's loaders (``dynamo/planner/monitoring/perf_metrics.py``): npz first, else JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_ppd.errors import ConfigError

PREFILL_NPZ = Path("selected_prefill_interpolation") / "raw_data.npz"
DECODE_NPZ = Path("selected_decode_interpolation") / "raw_data.npz"
PREFILL_JSON, DECODE_JSON = Path("prefill_raw_data.json"), Path("decode_raw_data.json")
MOCKER_NPZ = Path("perf_data.npz")
CACHED_NPZ = Path("selected_cached_context") / "raw_data.npz"
CACHED_JSON = Path("cached_context.json")
CACHED_SCHEMA = "pytest-ppd/cached-context/1"
MOCKER_RESOLUTION = 100  # Dynamo's converter default


@dataclass(frozen=True)
class PrefillTable:
    """Median TTFT of proven-uncached requests per ISL (concurrency 1)."""

    isl: tuple[int, ...]
    ttft_ms: tuple[float, ...]
    thpt_per_gpu: tuple[float, ...]  # isl / ttft_ms * 1000 / num_gpus


@dataclass(frozen=True)
class DecodeTable:
    """One entry per (ISL, concurrency) point, in Dynamo's variables."""

    x_kv_usage: tuple[float, ...]
    y_context_length: tuple[float, ...]
    z_itl: tuple[float, ...]
    z_thpt_per_gpu: tuple[float, ...]
    max_kv_tokens: int
    isl: tuple[int, ...] = ()
    concurrency: tuple[int, ...] = ()


@dataclass(frozen=True)
class CachedTable:
    """Median TTFT (ms) of appending m fresh tokens to L proven-cached ones; NaN where not measured."""

    m: tuple[int, ...]
    L: tuple[int, ...]
    ttft_ms: tuple[tuple[float, ...], ...]  # [L index][m index]
    points: tuple[dict[str, Any], ...] = ()  # per-point detail (reps, cached_tokens, reasons)

    def at(self, m: int, L: int) -> float:
        return self.ttft_ms[self.L.index(L)][self.m.index(m)]


def _savez(path: Path, **arrays: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # uncompressed, as Dynamo writes them
    return path


def write_prefill(out: Path, t: PrefillTable) -> list[Path]:
    npz = _savez(out / PREFILL_NPZ, prefill_isl=np.asarray(t.isl, dtype=np.int64),
                 prefill_ttft=np.asarray(t.ttft_ms, dtype=np.float64),
                 prefill_thpt_per_gpu=np.asarray(t.thpt_per_gpu, dtype=np.float64))
    data = {"prefill_isl": list(t.isl), "prefill_ttft": list(t.ttft_ms), "prefill_thpt_per_gpu": list(t.thpt_per_gpu)}
    (out / PREFILL_JSON).write_text(json.dumps(data))
    return [npz, out / PREFILL_JSON]


def write_decode(out: Path, t: DecodeTable) -> list[Path]:
    npz = _savez(out / DECODE_NPZ, x_kv_usage=np.asarray(t.x_kv_usage, dtype=np.float64),
                 y_context_length=np.asarray(t.y_context_length, dtype=np.float64),
                 z_itl=np.asarray(t.z_itl, dtype=np.float64),
                 z_thpt_per_gpu=np.asarray(t.z_thpt_per_gpu, dtype=np.float64),
                 max_kv_tokens=np.array([t.max_kv_tokens], dtype=np.int64))
    data = {"x_kv_usage": list(t.x_kv_usage), "y_context_length": list(t.y_context_length), "z_itl": list(t.z_itl),
            "z_thpt_per_gpu": list(t.z_thpt_per_gpu), "max_kv_tokens": int(t.max_kv_tokens)}
    (out / DECODE_JSON).write_text(json.dumps(data))
    return [npz, out / DECODE_JSON]


def read_prefill(profile_dir: Path) -> PrefillTable:
    """Dynamo's loader order: the npz, else prefill_raw_data.json."""
    npz, js = profile_dir / PREFILL_NPZ, profile_dir / PREFILL_JSON
    if npz.exists():
        with np.load(npz) as d:
            cols = [d["prefill_isl"].tolist(), d["prefill_ttft"].tolist(), d["prefill_thpt_per_gpu"].tolist()]
    elif js.exists():
        data = json.loads(js.read_text())
        cols = [data["prefill_isl"], data["prefill_ttft"], data["prefill_thpt_per_gpu"]]
    else:
        raise ConfigError(f"{profile_dir} has no prefill profile ({PREFILL_NPZ} or {PREFILL_JSON}); run ppd profile")
    return PrefillTable(tuple(int(v) for v in cols[0]), tuple(map(float, cols[1])), tuple(map(float, cols[2])))


def read_decode(profile_dir: Path) -> DecodeTable:
    npz, js = profile_dir / DECODE_NPZ, profile_dir / DECODE_JSON
    keys = ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")
    if npz.exists():
        with np.load(npz) as d:
            cols = [tuple(map(float, d[k].tolist())) for k in keys]
            max_kv = int(d["max_kv_tokens"][0])
    elif js.exists():
        data = json.loads(js.read_text())
        cols = [tuple(map(float, data[k])) for k in keys]
        max_kv = int(data["max_kv_tokens"])
    else:
        raise ConfigError(f"{profile_dir} has no decode profile ({DECODE_NPZ} or {DECODE_JSON}); run ppd profile")
    return DecodeTable(cols[0], cols[1], cols[2], cols[3], max_kv_tokens=max_kv)


def _interp_in_batch(ns: np.ndarray, itls: np.ndarray, bs: float) -> float:
    """ITL at batch size bs from one context's measured (concurrency, ITL): piecewise linear, linear beyond."""
    if len(ns) == 1:
        return float(itls[0])
    if bs <= ns[-1]:
        return float(np.interp(bs, ns, itls))
    slope = (itls[-1] - itls[-2]) / (ns[-1] - ns[-2])
    return float(itls[-1] + slope * (bs - ns[-1]))


def mocker_table(prefill: PrefillTable, decode: DecodeTable,
                 resolution: int = MOCKER_RESOLUTION) -> dict[str, np.ndarray]:
    """The Mocker's arrays, straight from the measurements (Dynamo's converter fits a linear model first).

    Prefill: the measured (ISL, TTFT) points. Decode: contexts = the measured ones (y_context_length);
    active KV = linspace(0, largest measured active KV, resolution); each cell is the ITL at batch
    max(1, kv / context), interpolated in concurrency within that context's measurements.
    """
    y = np.asarray(decode.y_context_length)
    if len(prefill.isl) < 2 or len(np.unique(y)) < 2:  # the Mocker's interpolators need two points per axis
        raise ConfigError("the Mocker table needs at least 2 prefill ISLs and 2 decode contexts with proven "
                          "points; run both sweeps with a larger --context-length")
    kv_used = np.asarray(decode.x_kv_usage) * decode.max_kv_tokens
    ctx = np.unique(y)
    kv = np.linspace(0.0, float(kv_used.max()), resolution)
    itl = np.empty((len(kv), len(ctx)))
    for j, c in enumerate(ctx):
        rows = np.flatnonzero(y == c)
        ns = np.rint(kv_used[rows] / c)
        order = np.argsort(ns)
        ns, itls = ns[order], np.asarray(decode.z_itl)[rows][order]
        for i, k in enumerate(kv):
            itl[i, j] = _interp_in_batch(ns, itls, max(1.0, k / c))
    return {"prefill_isl": np.asarray(prefill.isl, dtype=np.float64),
            "prefill_ttft_ms": np.asarray(prefill.ttft_ms, dtype=np.float64),
            "decode_active_kv_tokens": kv, "decode_context_length": ctx.astype(np.float64),
            "decode_itl": itl.astype(np.float64)}


def write_mocker(out: Path, prefill: PrefillTable, decode: DecodeTable) -> list[Path]:
    return [_savez(out / MOCKER_NPZ, **mocker_table(prefill, decode))]


def write_cached(out: Path, t: CachedTable, meta: dict[str, Any]) -> list[Path]:
    grid = np.asarray(t.ttft_ms, dtype=np.float64).reshape(len(t.L), len(t.m))
    npz = _savez(out / CACHED_NPZ, cached_m=np.asarray(t.m, dtype=np.int64), cached_L=np.asarray(t.L, dtype=np.int64),
                 ttft_ms=grid)
    doc = {
        "schema": CACHED_SCHEMA,
        "about": "TTFT of appending m fresh tokens to L cached ones, concurrency 1, each request's cache state "
                 "proven (meta_info cached_tokens == L, page-aligned); median of the valid repetitions",
        "columns": {"m": "fresh (appended) tokens", "L": "cached context tokens",
                    "ttft_ms": "[L index][m index] median TTFT in ms; null = clipped (L + m over the context) "
                               "or no proven repetition"},
        **meta,
        "m": list(t.m), "L": list(t.L),
        "ttft_ms": [[None if np.isnan(v) else v for v in row] for row in grid.tolist()],
        "points": list(t.points),
    }
    (out / CACHED_JSON).write_text(json.dumps(doc, indent=1) + "\n")
    return [npz, out / CACHED_JSON]


def read_cached(profile_dir: Path) -> CachedTable:
    path = profile_dir / CACHED_NPZ
    if not path.exists():
        raise ConfigError(f"{profile_dir} has no cached-context table ({CACHED_NPZ}); run ppd profile --sweeps cached")
    with np.load(path) as d:
        grid = tuple(tuple(float(v) for v in row) for row in d["ttft_ms"].tolist())
        return CachedTable(tuple(int(v) for v in d["cached_m"]), tuple(int(v) for v in d["cached_L"]), grid)
