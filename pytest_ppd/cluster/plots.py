"""PNG plot of a strategy comparison (matplotlib, headless): per setup, TTFT CDFs and P:D over time.

    plot_strategies([cmp_small, cmp_large], Path("cluster_strategies.png"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from pytest_ppd.cluster.compare import Comparison


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_strategies(comparisons: Sequence["Comparison"], path: Path) -> Path:
    """One row per setup: the first seed's TTFT CDF per strategy (log x, SLO dashed), and its prefill
    engines over time (serving; a static strategy is a flat line)."""
    fig, grid = plt.subplots(len(comparisons), 2, figsize=(12, 3.8 * len(comparisons)), squeeze=False)
    colors = dict(zip(("baseline", "static", "adaptive", "dynamo", "offline"), plt.cm.tab10(np.arange(5))))
    for (cdf, pd_ax), cmp in zip(grid, comparisons):
        for name, rep in cmp.reports.items():
            first = rep.outcomes[0]
            color = colors.get(name, "k")
            if first.ttft_ms:
                ys = np.arange(1, len(first.ttft_ms) + 1) / len(first.ttft_ms)
                cdf.step(first.ttft_ms, ys, where="post", color=color, label=f"{name} ({first.chosen[:22]})")
            if first.schedule is not None:
                ts = [p.t_ns / 1e9 for p in first.schedule.timeline]
                ts.append(max(first.summary.span_s, ts[-1]))  # restarts may end after the last token
                xs = [p.prefill for p in first.schedule.timeline]
                pd_ax.step(ts, xs + xs[-1:], where="post", color=color, label=name)
            elif "P" in first.chosen and "D" in first.chosen:
                x = int(first.chosen.split("P")[0])
                pd_ax.plot([0, first.summary.span_s], [x, x], color=color, ls="--", label=name)
        cdf.axvline(cmp.study.slo.ttft_ms, color="grey", ls=":", lw=1)
        cdf.set(xscale="log", xlabel="TTFT (ms)", ylabel="fraction of requests",
                title=f"{cmp.setup}: {cmp.study.gpus} GPUs, {cmp.workload.requests} req at {cmp.workload.rate:g}/s")
        pd_ax.set(xlabel="virtual time (s)", ylabel="prefill engines serving", ylim=(0, cmp.study.gpus),
                  title=f"P:D over time (of {cmp.study.gpus}; re-split {cmp.study.resplit.startup_s:g} s start-up)")
        for ax in (cdf, pd_ax):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    return _save(fig, path)
