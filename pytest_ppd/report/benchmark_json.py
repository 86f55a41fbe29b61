"""Export measured points in pytest-benchmark's JSON format, so `pytest-benchmark compare` and
dashboards that read it work on pytest-ppd runs. One benchmark per (point, path); its rounds are
the valid batch latencies, in seconds as pytest-benchmark expects.

    pytest suites/ --ppd-benchmark-json=ppd.json
    pytest-benchmark compare ppd.json
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any, Iterable

import pytest_benchmark
from pytest_benchmark.stats import Stats
from pytest_benchmark.utils import get_commit_info


def _machine_info() -> dict[str, Any]:
    return {"node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
            "python_compiler": platform.python_compiler(), "python_implementation": platform.python_implementation(),
            "python_implementation_version": platform.python_version(), "python_version": platform.python_version(),
            "python_build": list(platform.python_build()), "release": platform.release(), "system": platform.system(),
            "cpu": {}}


def benchmark_document(outcomes: Iterable[Any], suite: str = "suites/test_append_grid.py",
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    benchmarks = []
    for o in sorted(outcomes, key=lambda o: (o.point, o.path)):
        samples = [r.batch_latency_ms / 1e3 for r in o.valid if r.batch_latency_ms is not None]
        if not samples:
            continue
        stats = Stats()
        for x in samples:
            stats.update(x)
        name = f"test_append[{o.point.id}-{o.path}]"
        benchmarks.append({
            "group": f"L{o.point.L}-{o.path}", "name": name, "fullname": f"{suite}::{name}",
            "params": {"bs": o.point.bs, "L": o.point.L, "m": o.point.m, "path": o.path},
            "param": f"{o.point.id}-{o.path}",
            "extra_info": {"floor_s": o.records[0].floor_ms / 1e3, "invalid_rounds": len(o.invalid),
                           **(extra or {})},
            "options": {"disable_gc": False, "timer": "perf_counter (client, TTFT of the batch)", "min_rounds": 1,
                        "max_time": 0, "min_time": 0, "warmup": False},
            "stats": {**stats.as_dict(), "data": samples, "iterations": 1},
        })
    return {"machine_info": _machine_info(), "commit_info": get_commit_info(),
            "benchmarks": benchmarks, "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": pytest_benchmark.__version__}


def write_benchmark_json(path: Path, outcomes: Iterable[Any], extra: dict[str, Any] | None = None) -> Path:
    from pytest_ppd.baseline import write_atomic

    write_atomic(Path(path), json.dumps(benchmark_document(outcomes, extra=extra), indent=1) + "\n")
    return Path(path)
