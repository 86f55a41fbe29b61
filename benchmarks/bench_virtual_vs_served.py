"""Benchmark (prints, asserts nothing): virtual time against the served sim's engine-side time.

For every point of a grid and both paths, the virtual backend's batch latency is
set against the served sim's (real HTTP, real sglang-router) engine-side batch
time: from the first request's arrival at the serving engine to the last first
token, by the engine's own stamps (`request_received_ts`, `first_token_latency`),
less the event-loop lateness its engines accumulated during that round (read
from /server_info before and after). Two virtual columns: the protocol's own
(every request of a round sent at one instant), and the same rounds replayed with
the arrival offsets the served engine saw (its host parses a burst one request
after another). Prints one row per point and the distribution of the relative
differences (target: median within 5%, P90 within 10%); then the virtual
backend's wall time and simulated events per wall second on the grid.

    python benchmarks/bench_virtual_vs_served.py --grid quick
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from pytest_ppd.client.runner import HttpDriver, Settings, Target, measure_point
from pytest_ppd.client.virtual import VirtualDriver
from pytest_ppd.client.workload import Workload
from pytest_ppd.grid import parse_grid
from pytest_ppd.records import RecordStore
from pytest_ppd.servers.topology import TopologyConfig, start_topology
from pytest_ppd.servers.virtual import virtual_topology
from pytest_ppd.sim.deployment import NS
from pytest_ppd.specs import gpu_spec, model_spec

KIND = {"local": "colocated", "remote": "pd"}


def _lateness(urls: list[str]) -> float:
    return sum(httpx.get(u + "/server_info", trust_env=False).json()["sim"]["loop_lateness_s"] for u in urls)


def engine_span_ms(results) -> tuple[float, list[float]] | None:  # type: ignore[no-untyped-def]
    """The serving engine's own batch time (first request received to last first token, by its stamps)
    and each request's arrival offset (s) from the first."""
    metas = [r.meta_info for r in results]
    if not all("request_received_ts" in m and "first_token_latency" in m for m in metas):
        return None
    received = [m["request_received_ts"] for m in metas]
    first = min(received)
    span = max(t + m["first_token_latency"] for t, m in zip(received, metas)) - first
    return span * 1e3, [t - first for t in received]


@dataclass
class ServedRound:
    wl: Workload
    round_: int
    engine_ms: float
    offsets_s: list[float]


class LatenessDriver(HttpDriver):
    """The HTTP driver, noting each round's engine batch span less its engines' event-loop lateness."""

    def __init__(self, target: Target, engines: list[str], rounds: list[ServedRound | None]) -> None:
        super().__init__(target, 600.0)
        self.engines, self.rounds = engines, rounds

    async def round(self, wl, point, round_, max_new):  # type: ignore[no-untyped-def]
        before = await asyncio.to_thread(_lateness, self.engines)
        results = await super().round(wl, point, round_, max_new)
        late_ms = (await asyncio.to_thread(_lateness, self.engines) - before) * 1e3
        span = engine_span_ms(results)
        self.rounds.append(None if span is None else ServedRound(wl, round_, span[0] - late_ms, span[1]))
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
            rounds: list[ServedRound | None] = []
            store = RecordStore(tmp / f"s-{path}-{point.id}", run_id="b", config_hash="h")
            outcome = measure_point(target, point, settings, store, driver=LatenessDriver(target, engines, rounds))
            out[point] = [s for r, s in zip(outcome.records, rounds) if r["valid"] and s is not None]
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


def replayed(point, path: str, rounds: list[ServedRound]) -> float:
    """The served rounds' arrival pattern in virtual time: median engine batch span (ms)."""
    dep, _ = virtual_topology(TopologyConfig(kind=KIND[path]))
    driver = VirtualDriver(dep)
    spans = []
    for r in rounds:
        asyncio.run(driver.warm(r.wl, point))
        start = dep.now_ns
        handles = [dep.submit(r.wl.prompt(c, r.round_), 1, at_ns=start + int(off * NS))
                   for c, off in enumerate(r.offsets_s)]
        dep.run_until_done(handles)
        spans.append((max(h.token_ns[0] for h in handles) - start) / 1e6)
    return statistics.median(spans)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="quick")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    points = parse_grid(args.grid)
    settings = Settings("bench", "sim", model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM"),
                        min_reps=args.reps, max_reps=args.reps)
    diffs, replay_diffs = [], []
    print(f"{'point':<22} {'path':<6} {'virtual':>9} {'served engine':>14} {'diff':>7} "
          f"{'virtual, served arrivals':>25} {'diff':>7}   (ms)")
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
                rounds = srv.get(point)
                if v is None or not rounds:
                    continue
                s = statistics.median(r.engine_ms for r in rounds)
                rv = replayed(point, path, rounds)
                diffs.append(v / s - 1)
                replay_diffs.append(rv / s - 1)
                print(f"{point.id:<22} {path:<6} {v:>9.2f} {s:>14.2f} {v / s - 1:>+7.1%} {rv:>25.2f} "
                      f"{rv / s - 1:>+7.1%}")
    for name, d in (("virtual", diffs), ("virtual with the served arrivals", replay_diffs)):
        a = np.abs(d)
        print(f"|{name} / served - 1| over {a.size} point-paths: median {np.median(a):.1%}, P90 "
              f"{np.percentile(a, 90):.1%}, max {a.max():.1%}; signed median {np.median(d):+.1%}")
    print(f"virtual: {args.grid} grid x 2 paths x {args.reps} rounds in {wall:.2f} s wall, "
          f"{events} events, {events / wall:,.0f} events per wall second")


if __name__ == "__main__":
    main()
