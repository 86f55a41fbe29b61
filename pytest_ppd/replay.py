"""The replay backend: stored rounds re-proven and handed out per point, nothing launched.

    replay = Replay(Path("records.jsonl"), model, gpu)
    outcome = replay.outcome(GridPoint(8, 4096, 512), "local")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_ppd.client.runner import PointOutcome
from pytest_ppd.grid import GridPoint
from pytest_ppd.importer import physical_reasons
from pytest_ppd.records import RecordStore
from pytest_ppd.specs import GpuSpec, ModelSpec


def reprove(record: dict[str, Any], model: ModelSpec, gpu: GpuSpec) -> dict[str, Any]:
    """Stored verdicts are not trusted: the floor is checked again against the run's model and GPU."""
    latency = record.get("batch_span_ms") or record.get("batch_latency_ms")
    if latency is None:
        return record
    old = list(record.get("invalid_reasons") or [])
    kinds = list(record.get("invalid_kinds") or [])
    fresh = [r for r in physical_reasons(record["bs"], record["L"], record["m"], latency, model, gpu, None)
             if str(r) not in old]
    reasons = old + [str(r) for r in fresh]
    if len(kinds) == len(old):  # records from before kinds existed keep their texts only
        kinds += [r.kind for r in fresh]
    return {**record, "invalid_reasons": reasons, "invalid_kinds": kinds,
            "valid": bool(record.get("valid")) and not reasons}


class Replay:
    def __init__(self, path: Path, model: ModelSpec, gpu: GpuSpec) -> None:
        self.rounds = [reprove(r, model, gpu) for r in RecordStore.read(path).rounds]

    def outcome(self, point: GridPoint, path: str) -> PointOutcome:
        records = [r for r in self.rounds if (r["bs"], r["L"], r["m"], r["path"]) == (point.bs, point.L, point.m, path)]
        return PointOutcome.of(point, path, records)
