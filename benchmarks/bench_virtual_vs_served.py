"""Benchmark (prints, asserts nothing): virtual time against the served sim's engine-side time.

For every point of a grid and both paths, the virtual backend's batch latency is
set against the served sim's (real HTTP, real sglang-router) engine-side batch
time: the largest `first_token_latency` of the round's requests, less the
event-loop lateness its engines accumulated during that round (read from
/server_info before and after). Prints one row per point and the distribution of
the relative difference (target: median within 5%, P90 within 10%); then the
virtual backend's wall time and simulated events per wall second on the grid.

    python benchmarks/bench_virtual_vs_served.py --grid quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from pytest_ppd.client.runner import HttpDriver, Settings, Target, measure_point
from pytest_ppd.client.virtual import VirtualDriver
from pytest_ppd.grid import parse_grid
from pytest_ppd.records import RecordStore
from pytest_ppd.servers.topology import TopologyConfig, start_topology
from pytest_ppd.servers.virtual import virtual_topology
from pytest_ppd.specs import gpu_spec, model_spec

KIND = {"local": "colocated", "remote": "pd"}


def _lateness(urls: list[str]) -> float:
    return sum(httpx.get(u + "/server_info", trust_env=False).json()["sim"]["loop_lateness_s"] for u in urls)


class LatenessDriver(HttpDriver):
    """The HTTP driver, noting each round's engine event-loop lateness (s)."""

    def __init__(self, target: Target, engines: list[str], late: list[float]) -> None:
        super().__init__(target, 600.0)
        self.engines, self.late = engines, late

    async def round(self, wl, point, round_, max_new):  # type: ignore[no-untyped-def]
        before = await asyncio.to_thread(_lateness, self.engines)
        results = await super().round(wl, point, round_, max_new)
        self.late.append(await asyncio.to_thread(_lateness, self.engines) - before)
        return results


def served(points, path: str, settings: Settings, tmp: Path) -> dict:
    out = {}
    with start_topology(TopologyConfig(kind=KIND[path]), tmp / f"srv-{path}") as topo:
        engines = topo.prefill + topo.decode if path == "remote" else [topo.colocated]
        info = httpx.get(engines[0] + "/server_info", trust_env=False).json()
        target = Target(path, topo.entry_url, tuple(engines), pool_tokens=info["max_total_num_tokens"])
        for point in points:
            if point.total_tokens > target.pool_tokens:
                continue
            late: list[float] = []
            store = RecordStore(tmp / f"s-{path}-{point.id}", run_id="b", config_hash="h")
            outcome = measure_point(target, point, settings, store, driver=LatenessDriver(target, engines, late))
            engine_ms = [max(r["server_ttft_ms"]) - lat * 1e3 for r, lat in zip(outcome.records, late) if r["valid"]]
            out[point] = statistics.median(engine_ms) if engine_ms else None
    return out


def virtual(points, path: str, settings: Settings, tmp: Path) -> tuple[dict, int]:
    dep, _ = virtual_topology(TopologyConfig(kind=KIND[path]))
    target = Target(path, "virtual://", (), pool_tokens=dep.pool_tokens)
    out = {}
    for point in points:
        if point.total_tokens > target.pool_tokens:
            continue
        store = RecordStore(tmp / f"v-{path}-{point.id}", run_id="b", config_hash="h")
        outcome = measure_point(target, point, settings, store, driver=VirtualDriver(dep))
        out[point] = outcome.summary.median if outcome.summary else None
    return out, dep.events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="quick")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    points = parse_grid(args.grid)
    settings = Settings("bench", "sim", model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM"),
                        min_reps=args.reps, max_reps=args.reps)
    diffs = []
    print(f"{'point':<22} {'path':<6} {'virtual ms':>11} {'served engine ms':>17} {'diff':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        events = 0
        started = time.perf_counter()
        virt = {}
        for path in KIND:
            virt[path], n = virtual(points, path, settings, Path(tmp))
            events += n
        wall = time.perf_counter() - started
        for path in KIND:
            srv = served(points, path, settings, Path(tmp))
            for point, v in virt[path].items():
                s = srv.get(point)
                if v is None or s is None:
                    continue
                diffs.append(v / s - 1)
                print(f"{point.id:<22} {path:<6} {v:>11.2f} {s:>17.2f} {v / s - 1:>+7.1%}")
    a = np.abs(diffs)
    print(f"|virtual/served - 1| over {a.size} point-paths: median {np.median(a):.1%}, P90 "
          f"{np.percentile(a, 90):.1%}, max {a.max():.1%}; signed median {np.median(diffs):+.1%}")
    print(f"virtual: {args.grid} grid x 2 paths x {args.reps} rounds in {wall:.2f} s wall, "
          f"{events} events, {events / wall:,.0f} events per wall second")


if __name__ == "__main__":
    main()
