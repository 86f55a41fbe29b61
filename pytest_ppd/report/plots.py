"""PNG plots of a study (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REGIME_CODE = {"overhead": 0, "transition": 1, "compute": 2}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PANELS_PER_ROW = 3


def latency_vs_m(points: pd.DataFrame, path: Path) -> Path:
    """Median latency vs m on log-log axes, one panel per L, one line per BS and path; floor dotted.

    Only the L values measured at two or more m get a panel (one point shows no scaling), unless none is.
    """
    measured = points[points["median_ms"].notna()]
    spans = measured.groupby("L")["m"].nunique()
    Ls = sorted(spans[spans >= 2].index) or sorted(points["L"].unique())
    cols = min(len(Ls), PANELS_PER_ROW)
    rows = -(-len(Ls) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.4 * rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(Ls):]:
        ax.set_visible(False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(points["bs"].nunique(), 1)))
    for ax, L in zip(axes, Ls):
        sub = points[(points["L"] == L) & points["median_ms"].notna()]
        for color, bs in zip(colors, sorted(points["bs"].unique())):
            for path_name, style in (("local", "-o"), ("remote", "--s")):
                row = sub[(sub["bs"] == bs) & (sub["path"] == path_name)].sort_values("m")
                if not row.empty:
                    ax.plot(row["m"], row["median_ms"], style, color=color, ms=3,
                            label=f"BS={bs} {path_name}")
            floor = sub[sub["bs"] == bs].drop_duplicates("m").sort_values("m")
            if not floor.empty:
                ax.plot(floor["m"], floor["floor_ms"], ":", color=color, lw=1)
        ax.set(xscale="log", yscale="log", xlabel="append length m (tokens)", ylabel="batch latency (ms)",
               title=f"L = {L}  (dotted: physical floor)")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a short span would crowd them
    fullest = max(axes[:len(Ls)], key=lambda a: len(a.get_legend_handles_labels()[1]))
    fullest.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def regime_heatmap(cells: pd.DataFrame, path: Path) -> Path:
    paths = [p for p in ("local", "remote") if p in set(cells["path"])] or ["local"]
    fig, axes = plt.subplots(1, len(paths), figsize=(6.5 * len(paths), 0.35 * max(len(cells) // 6, 8) + 2),
                             squeeze=False)
    cmap = matplotlib.colors.ListedColormap(["#9ecae1", "#fdd49e", "#ef6548"])
    for ax, p in zip(axes[0], paths):
        sub = cells[cells["path"] == p]
        table = sub.pivot_table(index=["bs", "L"], columns="m", values="regime", aggfunc="first")
        codes = table.apply(lambda col: col.map(REGIME_CODE)).to_numpy(dtype=float)
        ax.imshow(np.ma.masked_invalid(codes), cmap=cmap, vmin=0, vmax=2, aspect="auto")
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns], rotation=45)
        ax.set_yticks(range(len(table.index)), [f"BS={b} L={l_}" for b, l_ in table.index])
        ax.set(title=f"regime [{p}]: blue overhead, orange transition, red compute", xlabel="m")
    return _save(fig, path)


def routing_map(truth: pd.DataFrame, path: Path) -> Path:
    n_rows = len({(b, l_) for b, l_ in zip(truth["bs"], truth["L"])}) if not truth.empty else 1
    fig, ax = plt.subplots(figsize=(8, max(4.5, 0.45 * n_rows + 1.5)))
    if not truth.empty:
        ratio = truth["remote_ms"] / truth["local_ms"]
        ys = [f"BS={b} L={l_}" for b, l_ in zip(truth["bs"], truth["L"])]
        labels = sorted(set(ys), key=lambda s: (int(s.split()[0][3:]), int(s.split()[1][2:])))
        y = [labels.index(v) for v in ys]
        sc = ax.scatter(truth["m"], y, c=np.log2(ratio), cmap="coolwarm_r", vmin=-1, vmax=1, s=90,
                        edgecolors="k")
        for xm, yi, r in zip(truth["m"], y, ratio):
            ax.annotate(f"{r:.2f}", (xm, yi), xytext=(0, 8), textcoords="offset points", fontsize=7,
                        ha="center", va="bottom")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.6, len(labels) - 0.2)
        fig.colorbar(sc, label="log2(remote / local): > 0 local faster")
    ax.set(xscale="log", xlabel="m", title="routing map: REMOTE / LOCAL median latency per point")
    return _save(fig, path)


def local_vs_remote(truth: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 5))
    if not truth.empty:
        ax.scatter(truth["local_ms"], truth["remote_ms"], c=np.log2(truth["bs"]), cmap="viridis", s=25)
        lo = float(min(truth["local_ms"].min(), truth["remote_ms"].min()))
        hi = float(max(truth["local_ms"].max(), truth["remote_ms"].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
        ax.legend()
    ax.set(xscale="log", yscale="log", xlabel="LOCAL median (ms)", ylabel="REMOTE median (ms)",
           title="LOCAL vs REMOTE per point (color: log2 BS)")
    return _save(fig, path)


def write_plots(results_dir: Path, points: pd.DataFrame, study) -> list[Path]:  # noqa: ANN001
    out = []
    if not points.empty:
        out.append(latency_vs_m(points, results_dir / "latency_vs_m.png"))
    if not study.cells.empty:
        out.append(regime_heatmap(study.cells, results_dir / "regime_map.png"))
    out.append(routing_map(study.truth, results_dir / "routing_map.png"))
    out.append(local_vs_remote(study.truth, results_dir / "local_vs_remote.png"))
    return out
