"""Benchmark (prints): AppendRouter decision time per call, and analysis time for a grid's records.

    python benchmarks/bench_router.py [records.jsonl]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pytest_ppd.analysis.routing import AppendRouter, RouterParams
from pytest_ppd.analysis.study import analyze
from pytest_ppd.grid import PRESETS
from pytest_ppd.records import RecordStore


def main() -> None:
    router = AppendRouter("Llama-3.1-8B", "H100-SXM", RouterParams(hysteresis=0.05))
    points = [(p.bs, p.L, p.m) for p in PRESETS["full"]]
    for bs, L, m in points:  # first call per shape computes its rooflines
        router.decide(bs, L, m)
    n = 200_000
    start = time.perf_counter()
    for i in range(n):
        bs, L, m = points[i % len(points)]
        router.decide(bs, L, m, key=i & 15)
    per_call = (time.perf_counter() - start) / n
    print(f"decide(): {per_call * 1e6:.2f} us per call (warm shape cache, hysteresis on, {n} calls)")
    cold = AppendRouter("Llama-3.1-8B", "H100-SXM")
    start = time.perf_counter()
    for bs, L, m in points:
        cold.decide(bs, L, m)
    print(f"decide(): {(time.perf_counter() - start) / len(points) * 1e6:.2f} us per call on a new shape")
    if len(sys.argv) > 1:
        records = RecordStore.read(Path(sys.argv[1])).rounds
        start = time.perf_counter()
        study = analyze(records, "Llama-3.1-8B", "H100-SXM")
        print(f"analyze(): {time.perf_counter() - start:.2f} s for {len(records)} rounds, "
              f"{len(study.cells)} cells, {len(study.fits)} fits, {len(study.truth)} routed points")


if __name__ == "__main__":
    main()
