"""Replica counts for an SLA and a load, by Dynamo's SLA-planner formulas and cache-aware.

Dynamo's planner (``planner_core._compute_replica_requirements``), on a profile:

    num_p = ceil(rate x ISL / prefill_thpt_per_gpu(ISL) / gpus_per_engine)     prefill_thpt = ISL / TTFT(ISL)
    num_d = ceil(rate x OSL / best_decode_thpt_per_gpu(ITL target, ISL + OSL/2) / gpus_per_engine)

It sizes prefill from the raw ISL: a request whose ISL is mostly a cached prefix
is charged as a cold prefill of all of it. The cache-aware count charges what
the cached-context table measured instead, TTFT of m = (1 - cached) x ISL fresh
tokens on L = cached x ISL cached ones (interpolated as ``--sim-profile
dynamo:DIR`` does):

    num_p (cache-aware) = ceil(rate x TTFT_cached(m, L) / 1000 / gpus_per_engine)

Decode is the same for both: the whole context sits in decode's KV either way.
Correction factors are 1 (the planner learns them online).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytest_ppd.errors import ConfigError
from pytest_ppd.profile.formats import read_decode, read_prefill
from pytest_ppd.sim.costmodel import Extend
from pytest_ppd.sim.tablecost import TableCostModel
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL, gpu_spec, model_spec

FIELDS = ("ttft", "itl", "rate", "isl", "osl", "cached")


@dataclass(frozen=True)
class Target:
    """An SLA (TTFT and ITL in ms) and a load (requests/s of ISL in, OSL out, a fraction of ISL cached)."""

    ttft_ms: float
    itl_ms: float
    rate: float
    isl: int
    osl: int
    cached: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Target":
        """'ttft=200,itl=20,rate=10,isl=4000,osl=300,cached=0.75' (cached optional)."""
        try:
            pairs = dict(item.split("=", 1) for item in text.replace(" ", "").split(",") if item)
            values = {k: float(v) for k, v in pairs.items()}
        except ValueError:
            values = {}
        missing = [k for k in FIELDS[:-1] if k not in values]
        if missing or set(values) - set(FIELDS):
            raise ConfigError(f"--plan '{text}': give {','.join(f + '=N' for f in FIELDS)} (cached optional, a "
                              "fraction of ISL), e.g. ttft=200,itl=20,rate=10,isl=4000,osl=300,cached=0.75")
        target = cls(values["ttft"], values["itl"], values["rate"], int(values["isl"]), int(values["osl"]),
                     values.get("cached", 0.0))
        if min(target.ttft_ms, target.itl_ms, target.rate, target.isl, target.osl) <= 0 or not 0 <= target.cached < 1:
            raise ConfigError(f"--plan '{text}': every value must be > 0 and cached in [0, 1)")
        return target


@dataclass(frozen=True)
class Plan:
    prefill_dynamo: int
    prefill_cache_aware: int
    decode: int
    ttft_dynamo_ms: float
    ttft_cached_ms: float
    decode_thpt_per_gpu: float
    notes: tuple[str, ...] = ()

    def lines(self, t: Target) -> list[str]:
        fresh = round(t.isl * (1 - t.cached))
        out = [f"plan for {t.rate:g} req/s, ISL {t.isl} ({t.cached:.0%} cached), OSL {t.osl}; SLA TTFT "
               f"{t.ttft_ms:g} ms, ITL {t.itl_ms:g} ms:",
               f"  Dynamo's planner (raw ISL):  prefill {self.prefill_dynamo} x, decode {self.decode} x "
               f"(prefill TTFT at ISL {t.isl}: {self.ttft_dynamo_ms:.1f} ms)",
               f"  cache-aware (m={fresh} on L={t.isl - fresh}): prefill {self.prefill_cache_aware} x, decode "
               f"{self.decode} x (append TTFT {self.ttft_cached_ms:.1f} ms)",
               f"  decode: {self.decode_thpt_per_gpu:.0f} tokens/s per GPU at ITL <= {t.itl_ms:g} ms"]
        return out + [f"  note: {n}" for n in self.notes]


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    return float(np.interp(x, xs, ys))


def best_decode_thpt(profile_dir: Path, itl_ms: float, context: float) -> float:
    """Dynamo's find_best_throughput_per_gpu: the highest throughput per GPU whose ITL meets the target, at
    this context (linear in concurrency within each measured context, then between contexts); 0 if none."""
    dec = read_decode(profile_dir)
    y, itl, thpt = np.array(dec.y_context_length), np.array(dec.z_itl), np.array(dec.z_thpt_per_gpu)
    n = np.round(np.array(dec.x_kv_usage) * dec.max_kv_tokens / y)
    rows = []
    for ctx in np.unique(y):
        at = np.flatnonzero(y == ctx)
        at = at[np.argsort(n[at])]
        grid = np.linspace(n[at][0], n[at][-1], 200)
        rows.append((ctx, np.interp(grid, n[at], itl[at]), np.interp(grid, n[at], thpt[at])))
    ctxs = np.array([r[0] for r in rows])
    j = int(np.clip(np.searchsorted(ctxs, context), 1, len(ctxs) - 1)) if len(ctxs) > 1 else 0
    lo, hi = rows[max(j - 1, 0)], rows[j]
    w = 0.0 if hi[0] == lo[0] else float(np.clip((context - lo[0]) / (hi[0] - lo[0]), 0, 1))
    row_itl, row_thpt = lo[1] * (1 - w) + hi[1] * w, lo[2] * (1 - w) + hi[2] * w
    ok = row_itl <= itl_ms
    return float(row_thpt[ok].max()) if ok.any() else 0.0


def plan(profile_dir: Path, target: Target, gpus_per_engine: int | None = None) -> Plan:
    profile_dir = Path(profile_dir)
    manifest_path = profile_dir / "profile_manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    model, gpu = manifest.get("model", DEFAULT_MODEL), manifest.get("gpu", DEFAULT_GPU)
    gpus = gpus_per_engine or int(manifest.get("tp", 1))
    pre = read_prefill(profile_dir)
    ttft_isl = _interp(np.array(pre.isl, float), np.array(pre.ttft_ms), target.isl)
    thpt = target.isl / ttft_isl * 1000 / gpus
    prefill_dynamo = math.ceil(target.rate * target.isl / thpt / gpus)
    cost = TableCostModel(model_spec(model), gpu_spec(gpu), profile_dir)
    fresh = max(round(target.isl * (1 - target.cached)), 1)
    if target.cached > 0:
        ttft_cached = (cost.extend_time([Extend(fresh, target.isl - fresh)]) + cost.profile.request_overhead_s) * 1e3
    else:  # nothing cached: the same prefill point as Dynamo's, so the two counts differ only by the cache
        ttft_cached = ttft_isl
    prefill_cached = math.ceil(target.rate * ttft_cached / 1000 / gpus)
    d_thpt = best_decode_thpt(profile_dir, target.itl_ms, target.isl + target.osl / 2)
    notes = []
    if d_thpt <= 0:
        notes.append(f"no measured decode point meets ITL {target.itl_ms:g} ms at this context: Dynamo falls "
                     "back to its minimum replica count")
    decode = math.ceil(target.rate * target.osl / d_thpt / gpus) if d_thpt > 0 else 1
    if ttft_isl > target.ttft_ms:
        notes.append(f"a cold prefill of ISL {target.isl} takes {ttft_isl:.0f} ms > the TTFT SLA: more prefill "
                     "replicas cannot fix that (Dynamo's profiler would reject this engine)")
    if ttft_cached > target.ttft_ms:
        notes.append(f"the cached append takes {ttft_cached:.0f} ms > the TTFT SLA")
    return Plan(max(prefill_dynamo, 1), max(prefill_cached, 1), max(decode, 1), ttft_isl, ttft_cached, d_thpt,
                tuple(notes))
