"""Benchmark (prints, asserts nothing): the sim's own overhead and the client's overhead.

* sim overhead = client TTFT - the TTFT the cost model predicts for the same
  arrivals on a virtual clock (what the wall-clock driver, HTTP and the event
  loop add on top of the model);
* client overhead = client TTFT - the server's own first_token_latency.

At 1 and 64 concurrent streams, on a colocated sim engine:

    python benchmarks/bench_overhead.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from pytest_ppd.client.runner import send_round, warm_contexts
from pytest_ppd.client.stream import StreamClient
from pytest_ppd.client.workload import Workload
from pytest_ppd.grid import GridPoint
from pytest_ppd.servers.topology import TopologyConfig, start_topology
from pytest_ppd.sim.args import resolve
from pytest_ppd.sim.clock import VirtualRunner
from pytest_ppd.sim.costmodel import CostModel, CostProfile
from pytest_ppd.sim.engine import Engine, SimRequest


def modeled_ttfts(argv: list[str], wl: Workload, round_: int) -> list[float]:
    """TTFTs (s) the cost model gives: contexts warmed, then all BS appends arriving together."""
    cfg = resolve(argv)
    profile = CostProfile()
    engine = Engine(CostModel(cfg.model, cfg.gpu, profile), cfg.pool_tokens,
                    chunked_prefill_size=cfg.chunked_prefill_size, max_running_requests=cfg.max_running_requests)
    sim = VirtualRunner(engine)
    bs = wl.point.bs
    for c in range(bs):
        sim.submit(SimRequest(f"w{c}", wl.context(c), 1, arrival_s=0.0))
    t0 = sim.run() + 1.0
    appends = [SimRequest(f"a{c}", wl.prompt(c, round_), 2, arrival_s=t0 + profile.request_overhead_s)
               for c in range(bs)]
    for req in appends:
        sim.submit(req)
    sim.run()
    return [r.first_token_s - t0 for r in appends]


async def measure(url: str, wl: Workload, rounds: int) -> list[list]:
    out = []
    async with StreamClient(url) as client:
        await warm_contexts(client, wl, wl.point)
        for r in range(rounds):
            out.append((r, await send_round(client, wl, wl.point, r, 2)))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--L", type=int, default=1024)
    ap.add_argument("--m", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_topology(TopologyConfig(kind="colocated"), Path(tmp)) as topo:
        argv = topo.processes[0].argv[3:]  # after "python -m pytest_ppd.sim"
        print(f"{'streams':>7} {'client TTFT':>12} {'model TTFT':>11} {'sim ovh med':>11} {'sim ovh p90':>11} "
              f"{'client ovh med':>14} {'client ovh p90':>14}   (ms)")
        for bs in (1, 64):
            wl = Workload(GridPoint(bs, args.L, args.m), 128256, seed=bs, path="bench")
            rounds = asyncio.run(measure(topo.colocated, wl, args.rounds))
            sim_ovh, cli_ovh, ttfts, models = [], [], [], []
            for r, results in rounds:
                model = modeled_ttfts(argv, wl, r)
                for res, mod in zip(results, model):
                    if res.ttft_ns is None:
                        continue
                    ttft = res.ttft_ns / 1e6
                    ttfts.append(ttft)
                    models.append(mod * 1e3)
                    sim_ovh.append(ttft - mod * 1e3)
                    if "first_token_latency" in res.meta_info:
                        cli_ovh.append(ttft - res.meta_info["first_token_latency"] * 1e3)
            print(f"{bs:>7} {statistics.median(ttfts):>12.2f} {statistics.median(models):>11.2f} "
                  f"{statistics.median(sim_ovh):>11.2f} {pct(sim_ovh, 0.9):>11.2f} "
                  f"{statistics.median(cli_ovh):>14.2f} {pct(cli_ovh, 0.9):>14.2f}")


if __name__ == "__main__":
    main()
