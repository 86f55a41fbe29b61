"""PNG plots of a profile (matplotlib, headless): TTFT over ISL, the ITL surface, TTFT over (m, L)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pytest_ppd.profile.formats import CachedTable, DecodeTable, PrefillTable  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def prefill_plot(t: PrefillTable, path: Path) -> Path:
    """Median TTFT (proven cold) and prefill throughput per GPU over ISL."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(t.isl, t.ttft_ms, "-o", ms=3)
    a.set(xlabel="ISL (tokens)", ylabel="TTFT (ms)", title="prefill TTFT, concurrency 1")
    b.plot(t.isl, t.thpt_per_gpu, "-o", ms=3, color="tab:green")
    b.set(xlabel="ISL (tokens)", ylabel="tokens/s/GPU", title="prefill throughput per GPU")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def decode_plot(t: DecodeTable, path: Path) -> Path:
    """ITL over (active KV fraction, context), one line per context, colour = context."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    y = np.asarray(t.y_context_length)
    contexts = np.unique(y)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(contexts), 1)))
    for color, c in zip(colors, contexts):
        rows = y == c
        x = np.asarray(t.x_kv_usage)[rows]
        a.plot(x, np.asarray(t.z_itl)[rows], "-o", ms=3, color=color, label=f"context {c:g}")
        b.plot(x, np.asarray(t.z_thpt_per_gpu)[rows], "-o", ms=3, color=color)
    a.set(xlabel="active KV usage (fraction of the pool)", ylabel="ITL (ms)", title="decode ITL")
    b.set(xlabel="active KV usage (fraction of the pool)", ylabel="tokens/s/GPU", title="decode throughput per GPU")
    a.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def cached_plot(t: CachedTable, path: Path, prefill: PrefillTable | None) -> Path:
    """TTFT of an m-token append over m, one line per cached L; dotted: a cold prefill of L + m."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    grid = np.asarray(t.ttft_ms, dtype=float).reshape(len(t.L), len(t.m))
    colors = plt.cm.plasma(np.linspace(0, 0.85, max(len(t.L), 1)))
    for color, L, row in zip(colors, t.L, grid):
        ok = ~np.isnan(row)
        if ok.any():
            ax.plot(np.asarray(t.m)[ok], row[ok], "-o", ms=3, color=color, label=f"L = {L} cached")
            if prefill is not None and L and len(prefill.isl) >= 2:
                cold = np.interp(np.asarray(t.m)[ok] + L, prefill.isl, prefill.ttft_ms)
                ax.plot(np.asarray(t.m)[ok], cold, ":", color=color, lw=1)
    ax.set(xscale="log", yscale="log", xlabel="fresh tokens m", ylabel="TTFT (ms)",
           title="append on cached context\n(dotted: cold prefill of L + m, from the prefill sweep)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_profile(out: Path, prefill: PrefillTable | None, decode: DecodeTable | None,
                 cached: CachedTable | None) -> list[Path]:
    paths = []
    if prefill is not None and prefill.isl:
        paths.append(prefill_plot(prefill, out / "prefill_ttft.png"))
    if decode is not None and decode.z_itl:
        paths.append(decode_plot(decode, out / "decode_itl.png"))
    if cached is not None and not np.isnan(np.asarray(cached.ttft_ms, dtype=float)).all():
        paths.append(cached_plot(cached, out / "cached_context_ttft.png", prefill))
    return paths
