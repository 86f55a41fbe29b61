"""Benchmark (prints): simulated requests per wall second of cluster studies in virtual time.

    python benchmarks/bench_cluster.py                      # both cases
    python benchmarks/bench_cluster.py --requests 10000     # a shorter multi-turn trace

1. Seed 003's large scale, 500 requests on 32 GPUs (64 req/s), every strategy once: wall seconds of the
   strategy (its search and planner included), simulations it ran, and simulated requests per wall second.
   The searches use PPD_JOBS worker processes (default: the CPUs); ``PPD_JOBS=1 python ...`` for one
   simulation after another.
2. A multi-turn trace (workload ``multiturn``: ~6 turns per session, 1 s think time, context growing) of
   100 000 requests on 32 GPUs behind the cache-aware router, aggregated and 8P24D; it says which build
   ran (``PPD_COMPILE=1 pip install --no-build-isolation .`` into a venv of its own compiles the simulator
   with mypyc; that venv's python runs this script on it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pytest_ppd.cluster import Slo, generate, parse_deployment, simulate, workload_spec
from pytest_ppd.cluster.planners import ProfileModel
from pytest_ppd.cluster.pool import jobs
from pytest_ppd.cluster.strategy import make_strategy
from pytest_ppd.cluster.study import Study
from pytest_ppd.sim.native import compiled


def seed003_large(profile: Path | None) -> None:
    spec = workload_spec("seed003", requests=500, rate=64.0)
    trace, study = generate(spec, seed=0), Study(32, Slo(500, 50))
    start = time.perf_counter()
    ProfileModel.of(study.hardware, profile)
    print(f"planner profile (virtual ppd profile, once per process): {time.perf_counter() - start:.2f} s")
    print(f"seed 003 large: 500 requests, 32 GPUs, 64 req/s ({jobs()} worker process(es) for searches)")
    for name in ("fixed", "static", "adaptive", "dynamo", "offline"):
        strategy = make_strategy(name, spec, 0, deployment=parse_deployment("8P24D"), search="local",
                                 hardware=study.hardware, profile=profile)
        start = time.perf_counter()
        outcome = strategy.run(trace, study)
        wall = time.perf_counter() - start
        print(f"  {name:<9} {outcome.chosen[:28]:<28} {wall:6.2f} s wall, {outcome.runs:2d} simulation(s), "
              f"{len(trace) * outcome.runs / wall:7.0f} simulated requests per wall second "
              f"(the run it reports: {outcome.summary.wall_s:.2f} s)")


def multiturn(requests: int) -> None:
    start = time.perf_counter()
    trace = generate(workload_spec("multiturn", requests=requests, rate=320.0), seed=0)
    build = "compiled (PPD_COMPILE=1)" if compiled() else "pure Python (PPD_COMPILE=1 for the compiled build)"
    print(f"multi-turn trace: {requests} requests in {trace.sessions} sessions, drawn in "
          f"{time.perf_counter() - start:.2f} s; simulator: {build}")
    for deployment in ("agg", "8P24D"):
        run = simulate(parse_deployment(deployment, 32, policy="cache"), trace)
        tokens = sum(r.output_tokens for r in run.results)
        print(f"  {deployment:<6} on 32 GPUs (cache-aware): {run.wall_s:6.1f} s wall for {run.span_ns / 1e9:.0f} s "
              f"virtual, {len(trace) / run.wall_s:6.0f} requests/s, {tokens / run.wall_s:8.0f} tokens/s, "
              f"{run.events / run.wall_s:7.0f} events/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="multi-turn trace size (default: 100000)")
    parser.add_argument("--profile", type=Path, default=None, help="planner profile directory to reuse")
    parser.add_argument("--skip", choices=("seed003", "multiturn"), default=None)
    args = parser.parse_args()
    if args.skip != "seed003":
        seed003_large(args.profile)
    if args.skip != "multiturn":
        multiturn(args.requests)


if __name__ == "__main__":
    main()
