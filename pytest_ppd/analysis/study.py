"""One call from records to every table the suites assert on and the reports show.

    study = analyze(records, "Llama-3.1-8B", "H100-SXM")
    study.cells        # per (path, bs, L, m): median, n, floor, elasticity, regime, roofline fraction
    study.fits         # per (path, bs, L): exponent with 95% CI, endpoint slope
    study.truth        # per point: local_ms, remote_ms, oracle route
    study.policies     # {"grid": ..., "held_out": ...}: accuracy and regret per policy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from pytest_ppd.analysis.regime import regime_table, rounds_frame
from pytest_ppd.analysis.policies import compare_policies, truth_table
from pytest_ppd.analysis.routing import RouterParams
from pytest_ppd.analysis.scaling import fit_exponent

if TYPE_CHECKING:
    from pytest_ppd.records import RoundLike


@dataclass
class Study:
    rounds: pd.DataFrame
    cells: pd.DataFrame
    fits: pd.DataFrame
    truth: pd.DataFrame
    policies: dict[str, pd.DataFrame] = field(default_factory=dict)


def exponent_table(rounds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (path, bs, L), grp in rounds.groupby(["path", "bs", "L"], sort=True):
        if grp["m"].nunique() < 2:
            continue
        fit = fit_exponent(grp["m"].tolist(), grp["batch_latency_ms"].tolist())
        rows.append({"path": path, "bs": bs, "L": L, "exponent": fit.exponent, "ci_low": fit.ci_low,
                     "ci_high": fit.ci_high, "endpoint_slope": fit.endpoint_slope, "n": fit.n,
                     "m_min": int(grp["m"].min()), "m_max": int(grp["m"].max())})
    cols = ["path", "bs", "L", "exponent", "ci_low", "ci_high", "endpoint_slope", "n", "m_min", "m_max"]
    return pd.DataFrame(rows, columns=cols)


def analyze(records: Iterable[RoundLike], model: Any, gpu: Any, params: RouterParams | None = None) -> Study:
    """`gpu` is D's; P's (heterogeneous P/D) comes from the REMOTE records' prefill_gpu."""
    records = list(records)
    prefill_gpus = {r["prefill_gpu"] for r in records if r.get("prefill_gpu")}
    if len(prefill_gpus) > 1:
        raise ValueError(f"records from {len(prefill_gpus)} prefill GPUs {sorted(prefill_gpus)}: analyze one setup")
    rounds = rounds_frame(records)
    cells = regime_table(rounds)
    truth = truth_table(cells) if not cells.empty else pd.DataFrame()
    policies = (compare_policies(model, gpu, truth, params, prefill_gpus.pop() if prefill_gpus else None)
                if not truth.empty else {})
    return Study(rounds, cells, exponent_table(rounds), truth, policies)
