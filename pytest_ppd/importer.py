"""Published latency tables as records, re-proven: what `ppd import-table` and the replay backend use.

A table row (bs, L, m, latency_ms) becomes one record of the `published` backend.
It carries no per-request cache proof, so it is never valid; the floor and the
KV-pool capacity say whether it was even physically possible::

    records = records_from_table("suites/data/seed000_table.csv", "Llama-3.1-8B", "H100-SXM")
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pytest_ppd.roofline import floor_ms
from pytest_ppd.analysis.validity import Invalid, capacity_reason, floor_reason
from pytest_ppd.errors import ConfigError
from pytest_ppd.records import SCHEMA_VERSION, Record, derived_rates
from pytest_ppd.sglang_defaults import server_defaults
from pytest_ppd.specs import GpuSpec, ModelSpec, gpu_spec, model_spec


def physical_reasons(bs: int, L: int, m: int, latency_ms: float, model: ModelSpec, gpu: GpuSpec,
                     pool_tokens: int | None) -> list[Invalid]:
    """Floor and capacity: the checks that need nothing but the numbers (the same rules as a round's proof)."""
    reasons = [floor_reason(latency_ms, floor_ms(model, gpu, bs, L, m)), capacity_reason(bs, L, m, pool_tokens)]
    return [r for r in reasons if r is not None]


def default_pool(model: ModelSpec, gpu: GpuSpec) -> int:
    """SGLang 0.5.23's token pool of one colocated engine on one GPU, at its defaults."""
    return server_defaults(model, gpu).pool_tokens


def records_from_table(path: str | Path, model: str | ModelSpec, gpu: str | GpuSpec,
                       suite: str = "published") -> list[Record]:
    spec, g = model_spec(model), gpu_spec(gpu)
    pool = default_pool(spec, g)
    text = "\n".join(line for line in Path(path).read_text().splitlines() if not line.startswith("#"))
    out = []
    for no, row in enumerate(csv.DictReader(io.StringIO(text)), 1):
        try:
            bs, L, m, lat = int(row["bs"]), int(row["L"]), int(row["m"]), float(row["latency_ms"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: row {no} needs integer bs, L, m and a number latency_ms") from None
        reasons = [Invalid("cache", "no per-request cached_tokens: cache state unproven (a published number, "
                                    "not a measurement)")]
        reasons += physical_reasons(bs, L, m, lat, spec, g, pool)
        out.append(Record(
            suite=suite, backend="published", path="local", model=spec.name, gpu=g.name, bs=bs, L=L, m=m,
            cache_rate=L / (L + m), round=0, ttft_ms=[None] * bs, batch_latency_ms=lat, batch_span_ms=lat,
            e2e_ms=[None] * bs, itl_ms_max=[None] * bs, prompt_tokens=[None] * bs, cached_tokens=[None] * bs,
            completion_tokens=[None] * bs, server_ttft_ms=[None] * bs, client_overhead_ms=[None] * bs,
            errors=[None] * bs, valid=False, invalid_reasons=[str(r) for r in reasons],
            invalid_kinds=[r.kind for r in reasons], floor_ms=floor_ms(spec, g, bs, L, m),
            **derived_rates(bs, L, m, lat), started_at=0.0, versions={"source": str(path)},
        ))
    return out


def write_records(records: list[Record], out: Path, config: dict[str, Any] | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"kind": "header", "schema": SCHEMA_VERSION, "run_id": "import", "config_hash": "import",
              "created_at": 0.0, **(config or {})}
    out.write_text("\n".join([json.dumps(header)] + [r.to_json() for r in records]) + "\n")
