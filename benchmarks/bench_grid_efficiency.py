"""Benchmark (prints, asserts nothing): how much of a grid run's wall time is measurement.

Runs `pytest suites/test_append_grid.py --ppd-grid=GRID` on the served sim and prints
wall time, the sum of measured batch latencies over every round, their ratio
(target <= 1.25), and the ratio without server start-up.

    python benchmarks/bench_grid_efficiency.py --grid quick
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_ppd.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="quick")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "res"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "suites" / "test_append_grid.py"),
                               "--ppd-backend=sim", f"--ppd-grid={args.grid}", f"--ppd-results={results}", "-q",
                               "-p", "no:cacheprovider",
                               *args.extra], capture_output=True, text=True)
        wall = time.perf_counter() - started
        stored = RecordStore.read(results / "records.jsonl")
    rounds = stored.rounds
    batch_s = sum((r["batch_span_ms"] or 0) for r in rounds) / 1e3
    first = min(r["started_at"] for r in rounds)
    last = max(r["started_at"] + max(e or 0 for e in r["e2e_ms"]) / 1e3 for r in rounds)
    print(proc.stdout.strip().splitlines()[-1])
    print(f"grid={args.grid} rounds={len(rounds)} valid={sum(r['valid'] for r in rounds)}")
    print(f"wall {wall:.1f} s; measured batches {batch_s:.1f} s; wall/batches {wall / batch_s:.2f}")
    print(f"first round to last round {last - first:.1f} s; that / batches {(last - first) / batch_s:.2f} "
          "(excludes interpreter and server start-up)")


if __name__ == "__main__":
    main()
