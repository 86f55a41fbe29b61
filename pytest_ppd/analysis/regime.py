"""Regimes: overhead-bound, transition or compute-bound, from how latency scales with m.

The regime of a cell (BS, L, m) is the local elasticity e = dlog T / dlog m
between m and the previous m of its row (the first m uses the next one):
overhead-bound e < 0.25, compute-bound e >= 0.75, transition between. Each
cell also carries its roofline fraction floor / T, and each row seed 000's
ratio T(m_max) / T(m_min).

    frame = rounds_frame(records)          # one row per valid round
    cells = regime_table(frame)            # one row per (path, bs, L, m)
    regime_map(cells, "local")             # BS x m map per L, as a DataFrame
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pytest_ppd.records import RoundLike

OVERHEAD_BELOW = 0.25
COMPUTE_FROM = 0.75
# A cell's regime differs from another (a baseline's, an expectation's) only when its elasticity is clear
# of the thresholds by this much: a cell sitting on a boundary flips with noise, which is no change of regime.
REGIME_MARGIN = 0.10
REGIMES = ("overhead", "transition", "compute")


def classify(elasticity: float) -> str:
    """overhead e < 0.25, compute e >= 0.75, else transition."""
    if not math.isfinite(elasticity):
        raise ValueError(f"elasticity must be finite, got {elasticity}")
    if elasticity < OVERHEAD_BELOW:
        return "overhead"
    if elasticity >= COMPUTE_FROM:
        return "compute"
    return "transition"


def rounds_frame(records: Iterable[RoundLike], valid_only: bool = True) -> pd.DataFrame:
    """Records (dicts of records.jsonl) as a DataFrame, one row per round."""
    cols = ["path", "bs", "L", "m", "round", "batch_latency_ms", "floor_ms", "valid", "backend", "model", "gpu"]
    rows = [{k: r.get(k) for k in cols} for r in records if r.get("kind", "round") == "round"]
    frame = pd.DataFrame(rows, columns=cols)
    if valid_only:
        frame = frame[frame["valid"].astype(bool)]
    return frame.reset_index(drop=True)


def cell_medians(frame: pd.DataFrame) -> pd.DataFrame:
    """Median latency, round count and floor per (path, bs, L, m)."""
    grouped = frame.groupby(["path", "bs", "L", "m"], sort=True)
    out = grouped.agg(median_ms=("batch_latency_ms", "median"), n=("batch_latency_ms", "size"),
                      floor_ms=("floor_ms", "first"))
    return out.reset_index()


def regime_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: median, elasticity, regime, roofline fraction, and the row's seed-000 ratio."""
    cells = cell_medians(frame)
    parts = []
    for _, row in cells.groupby(["path", "bs", "L"], sort=True):
        row = row.sort_values("m").copy()
        logm, logt = np.log(row["m"].to_numpy(float)), np.log(row["median_ms"].to_numpy(float))
        if len(row) < 2:
            row["elasticity"] = np.nan
        else:
            seg = np.diff(logt) / np.diff(logm)
            row["elasticity"] = np.concatenate([[seg[0]], seg])
        row["regime"] = [classify(e) if np.isfinite(e) else None for e in row["elasticity"]]
        row["roofline_fraction"] = row["floor_ms"] / row["median_ms"]
        t = row["median_ms"].to_numpy(float)
        row["seed_ratio"] = t[-1] / t[0]
        parts.append(row)
    if not parts:
        return cells.assign(elasticity=[], regime=[], roofline_fraction=[], seed_ratio=[])
    return pd.concat(parts, ignore_index=True)


def regime_map(table: pd.DataFrame, path: str) -> pd.DataFrame:
    """Rows (BS, L), columns m, values the regime's first letters (O / T / C)."""
    sub = table[table["path"] == path]
    if sub.empty:
        return pd.DataFrame()
    short = sub.assign(code=sub["regime"].map({"overhead": "O", "transition": "T", "compute": "C"}).fillna("-"))
    return short.pivot_table(index=["bs", "L"], columns="m", values="code", aggfunc="first")

