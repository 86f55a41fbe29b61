"""Routing policies judged on measurements: the fixed rules in use today, the measured ground truth
(which route was faster, and whether beyond noise), accuracy and regret of each policy.

    truth = truth_table(study.cells)
    compare_policies("Llama-3.1-8B", "H100-SXM", truth)   # accuracy and regret per policy, grid and held-out
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from pytest_ppd.analysis.routing import LOCAL, REMOTE, AppendRouter, RouterParams
from pytest_ppd.analysis.stats import one_sided_p
from pytest_ppd.specs import GpuSpec, ModelSpec

# A measured route counts as faster than the other (against an expectation or a baseline) only at
# this significance: compute-bound appends whose KV transfer overlaps the prefill tie within 1%.
ROUTE_ALPHA = 0.01

# -- fixed rules of the field, as comparable policies -----------------------------------
Policy = Callable[[int, int, int], str]


def seed000_rule(local_ms: Callable[[int, int, int], float]) -> Policy:
    """Seed 000's should_route_to_p_machine, with its published (4096x too large) KV bytes per token."""
    def rule(bs: int, L: int, m: int) -> str:
        r = L / (L + m)
        if bs >= 32 and m >= 4096:
            return REMOTE
        if bs <= 4 and r > 0.8:
            return LOCAL
        kv_transfer_ms = (L * 2 * 4096 * 32 * 8 * 128 * 2) / 25.6e9 * 1000
        return REMOTE if local_ms(bs, L, m) > kv_transfer_ms else LOCAL
    return rule


def fixed_policies(local_ms: Callable[[int, int, int], float]) -> dict[str, Policy]:
    """The rules in use today (thresholds as their projects document them)."""
    return {
        "always-local": lambda bs, L, m: LOCAL,
        "always-remote": lambda bs, L, m: REMOTE,
        # Dynamo conditional disaggregation: prefill remotely when the uncached prompt is long.
        "dynamo-uncached>1000": lambda bs, L, m: REMOTE if m > 1000 else LOCAL,
        # llm-d P/D profile handler: a threshold on non-cached tokens.
        "llm-d-noncached>256": lambda bs, L, m: REMOTE if m > 256 else LOCAL,
        # vllm-ppd: appends shorter than 512 tokens stay on the decode instance.
        "vllm-ppd-append<512": lambda bs, L, m: LOCAL if m < 512 else REMOTE,
        "seed000-table": seed000_rule(local_ms),
        # seed 001: transfers are cheap but wasteful; go remote only for very large appends.
        "seed001-m>2048": lambda bs, L, m: REMOTE if m > 2048 else LOCAL,
    }


def clearly_faster(rounds: pd.DataFrame | None, bs: int, L: int, m: int, route: str) -> tuple[bool, str]:
    """Is `route` faster at (bs, L, m) beyond noise? A one-sided Welch test on log latencies at
    p < ROUTE_ALPHA, and the evidence as text. Without two rounds per path there is no noise to
    judge, so the medians decide (True)."""
    if rounds is None or rounds.empty:
        return True, ""
    at = rounds[(rounds["bs"] == bs) & (rounds["L"] == L) & (rounds["m"] == m)]
    fast = np.log(at.loc[at["path"] == route, "batch_latency_ms"].to_numpy(float))
    slow = np.log(at.loc[at["path"] != route, "batch_latency_ms"].to_numpy(float))
    if fast.size < 2 or slow.size < 2:
        return True, ""
    p = one_sided_p(slow, fast)
    return p < ROUTE_ALPHA, f", p={p:.2g} over {fast.size}+{slow.size} rounds"


def truth_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per point with both paths measured: local_ms, remote_ms (medians) and the oracle route."""
    wide = cells.pivot_table(index=["bs", "L", "m"], columns="path", values="median_ms")
    if LOCAL not in wide.columns or REMOTE not in wide.columns:  # only one path measured
        return pd.DataFrame(columns=["bs", "L", "m", "local_ms", "remote_ms", "oracle"])
    wide = wide.dropna().rename(columns={LOCAL: "local_ms", REMOTE: "remote_ms"}).reset_index()
    if wide.empty:
        return wide.assign(oracle=[])
    wide["oracle"] = [LOCAL if a <= b else REMOTE for a, b in zip(wide["local_ms"], wide["remote_ms"])]
    return wide


def evaluate(policies: dict[str, Policy], truth: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and regret (extra latency vs the per-point oracle) of each policy."""
    rows = []
    for name, policy in policies.items():
        regrets, hits = [], 0
        for bs, L, m, loc, rem, oracle in truth[["bs", "L", "m", "local_ms", "remote_ms", "oracle"]].itertuples(
                index=False):
            route = policy(int(bs), int(L), int(m))
            chosen = loc if route == LOCAL else rem
            regrets.append(chosen - min(loc, rem))
            hits += route == oracle
        n = len(regrets)
        rows.append({"policy": name, "points": n, "accuracy": hits / n if n else float("nan"),
                     "mean_regret_ms": sum(regrets) / n if n else float("nan"),
                     "max_regret_ms": max(regrets) if n else float("nan")})
    return pd.DataFrame(rows).sort_values(["mean_regret_ms", "policy"]).reset_index(drop=True)


def trained_router(model: str | ModelSpec, gpu: str | GpuSpec, truth: pd.DataFrame,
                   params: RouterParams | None = None, prefill_gpu: str | GpuSpec | None = None) -> AppendRouter:
    """A router that has observed every (point, path) median of `truth`."""
    router = AppendRouter(model, gpu, params or RouterParams(), forget=1.0, prefill_gpu=prefill_gpu)
    for bs, L, m, loc, _rem in truth[["bs", "L", "m", "local_ms", "remote_ms"]].itertuples(index=False):
        router.observe(LOCAL, int(bs), int(L), int(m), float(loc))
    for bs, L, m, _loc, rem in truth[["bs", "L", "m", "local_ms", "remote_ms"]].itertuples(index=False):
        router.observe(REMOTE, int(bs), int(L), int(m), float(rem), p_holds_context=True)
    return router


def compare_policies(model: str | ModelSpec, gpu: str | GpuSpec, truth: pd.DataFrame,
                     params: RouterParams | None = None,
                     prefill_gpu: str | GpuSpec | None = None) -> dict[str, pd.DataFrame]:
    """Every policy on the grid (router trained on all points) and on a held-out half (odd m index)."""
    local_ms = {(int(r.bs), int(r.L), int(r.m)): float(r.local_ms) for r in truth.itertuples()}
    policies = fixed_policies(lambda bs, L, m: local_ms[(bs, L, m)])

    def as_policy(router: AppendRouter) -> Policy:
        return lambda bs, L, m: router.decide(bs, L, m, p_holds_context=True).route

    grid = evaluate({**policies, "append-router": as_policy(trained_router(model, gpu, truth, params, prefill_gpu))},
                    truth)
    ms = sorted(truth["m"].unique())
    held = truth["m"].isin(ms[1::2])
    train, test = truth[~held], truth[held]
    out = {"grid": grid}
    if not train.empty and not test.empty:
        router = trained_router(model, gpu, train, params, prefill_gpu)
        out["held_out"] = evaluate({**policies, "append-router": as_policy(router)}, test)
    return out
