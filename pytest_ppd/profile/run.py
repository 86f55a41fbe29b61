"""run_profile: the three sweeps on one engine (virtual, sim, sglang or external), then every file of the
profile directory.

    result = run_profile("Llama-3.1-8B", "H100-SXM", 1, Path("profile-h100"))
    result.prefill.ttft_ms, result.decode.z_itl, result.cached.at(512, 4096), result.invalid
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pytest_ppd import __version__
from pytest_ppd.errors import ConfigError
from pytest_ppd.profile import formats, measure, sweeps
from pytest_ppd.profile.formats import CachedTable, DecodeTable, PrefillTable
from pytest_ppd.profile.engines import BACKENDS, EngineFacts, open_engine
from pytest_ppd.profile.measure import PointRecord, ProfileStore, Progress
from pytest_ppd.profile.sweeps import ProfileDesign

MANIFEST_FILE = "profile_manifest.json"
DEFAULT_DESIGN = ProfileDesign()


@dataclass(frozen=True)
class ProfileResult:
    out_dir: Path
    design: ProfileDesign
    design_hash: str
    engine: EngineFacts
    prefill: PrefillTable | None
    decode: DecodeTable | None
    cached: CachedTable | None
    invalid: tuple[str, ...]  # one line per point (or request) that failed its proof
    notes: tuple[str, ...]
    files: tuple[Path, ...]
    measured: int  # points measured by this run
    reused: int  # points a resumed run took from profile_records.jsonl
    manifest: dict[str, Any] = field(default_factory=dict)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"'{backend}' is not a profile backend; valid: {', '.join(BACKENDS)}")


def _prefill_table(store: ProfileStore, isls: Sequence[int], num_gpus: int) -> PrefillTable:
    rows = []
    for isl in isls:
        rec = store.records.get(("prefill", f"isl={isl}"))
        ttft = measure.median_ttft_ms(rec) if rec else None
        if ttft:
            rows.append((isl, ttft, isl / ttft * 1000 / num_gpus))
    return PrefillTable(*(tuple(c) for c in zip(*rows))) if rows else PrefillTable((), (), ())


def _decode_table(store: ProfileStore, points: Sequence[tuple[int, int]], osl: int, max_kv: int,
                  num_gpus: int) -> DecodeTable:
    rows = []
    for isl, n in points:
        rec = store.records.get(("decode", f"isl={isl},n={n}"))
        itl = measure.decode_itl_ms(rec) if rec else None
        thpt = measure.decode_thpt_per_gpu(rec, num_gpus) if rec else None
        if itl is not None and thpt is not None:
            rows.append((sweeps.x_kv_usage(isl, osl, n, max_kv), sweeps.decode_context(isl, osl), itl, thpt, isl, n))
    cols = [tuple(c) for c in zip(*rows)] if rows else [()] * 6
    return DecodeTable(cols[0], cols[1], cols[2], cols[3], max_kv, cols[4], cols[5])


def _cached_table(store: ProfileStore, design: ProfileDesign) -> CachedTable:
    grid, points = [], []
    for L in design.cached_L:
        row = []
        for m in design.cached_m:
            rec = store.records.get(("cached", f"m={m},L={L}"))
            ttft = measure.median_ttft_ms(rec) if rec else None
            row.append(math.nan if ttft is None else ttft)
            if rec:
                points.append({"m": m, "L": L, "ttft_ms": ttft, "ttft_ms_reps": rec.ttft_ms,
                               "cached_tokens": rec.cached_tokens, "expected_cached": rec.expected_cached,
                               "n_valid": sum(rec.valid), "invalid_reasons": rec.invalid_reasons})
        grid.append(tuple(row))
    return CachedTable(design.cached_m, design.cached_L, tuple(grid), tuple(points))


def _invalid(records: Sequence[PointRecord]) -> list[str]:
    return [f"{r.sweep} {r.key}: {reason}" for r in records for reason in r.invalid_reasons]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_profile(model: str, gpu: str, tp: int, out_dir: Path, *, design: ProfileDesign = DEFAULT_DESIGN,
                backend: str = "virtual", context_length: int | None = None, max_total_tokens: int | None = None,
                progress: Progress | None = None, plots: bool = True, command: Sequence[str] | None = None,
                sim_flags: Sequence[str] = (), url: str | None = None, api_key: str | None = None,
                workdir: Path | None = None) -> ProfileResult:
    """Sweep, prove, and write the profile directory (resuming from its records when the design matches);
    sim_flags: --sim-* flags of the simulated engine (e.g. --sim-profile=dynamo:DIR); url: the engine of
    --backend external; workdir: logs and model directory of a started engine (sim, sglang)."""
    check_backend(backend)
    design = design.validate()
    if tp < 1:
        raise ConfigError(f"--tp must be >= 1, got {tp}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o {out_dir} is a file; give a directory for the profile")
    runner = open_engine(backend, model, gpu, tp, context_length=context_length, max_total_tokens=max_total_tokens,
                         sim_flags=sim_flags, url=url, api_key=api_key, workdir=workdir)
    try:
        return _run(runner, model, gpu, tp, out_dir, design, backend, progress, plots, command)
    finally:
        runner.close()


def _run(runner: Any, model: str, gpu: str, tp: int, out_dir: Path, design: ProfileDesign, backend: str,
         progress: Progress | None, plots: bool, command: Sequence[str] | None) -> ProfileResult:
    engine: EngineFacts = runner.facts
    identity = {"backend": backend, "model": model, "gpu": gpu, "tp": tp, "argv": engine.argv}
    digest = sweeps.design_hash(design, identity)
    store = ProfileStore(out_dir, digest)
    reused = len(store.records)
    num_gpus, ctx = tp, engine.max_context_length

    isls = sweeps.prefill_isls(ctx, design.prefill_granularity) if "prefill" in design.sweeps else []
    dpoints = (sweeps.decode_points(ctx, engine.max_kv_tokens, design.decode_osl, design.decode_granularity,
                                    design.decode_max_concurrency) if "decode" in design.sweeps else [])
    cpoints = (sweeps.cached_points(design.cached_m, design.cached_L, ctx) if "cached" in design.sweeps else [])
    if isls:
        measure.measure_prefill(runner, isls, design.prefill_reps, design.prefill_osl, store, seed=design.seed,
                                progress=progress)
    if dpoints:
        measure.measure_decode(runner, dpoints, design.decode_osl, store, seed=design.seed, progress=progress)
    if cpoints:
        measure.measure_cached(runner, cpoints, design.cached_reps, store, seed=design.seed, progress=progress)

    notes: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = [store.path] if store.path.exists() else []
    prefill = _prefill_table(store, isls, num_gpus) if isls else None
    decode = _decode_table(store, dpoints, design.decode_osl, engine.max_kv_tokens, num_gpus) if dpoints else None
    cached = _cached_table(store, design) if "cached" in design.sweeps else None
    if prefill is not None:
        if len(prefill.isl) < 3:
            notes.append(f"{len(prefill.isl)} proven prefill points: Dynamo's profiler saves none below 3")
        files += formats.write_prefill(out_dir, prefill)
    if decode is not None:
        files += formats.write_decode(out_dir, decode)
    if prefill is not None and decode is not None:
        try:
            files += formats.write_mocker(out_dir, prefill, decode)
        except ConfigError as exc:
            notes.append(f"no {formats.MOCKER_NPZ}: {exc}")
    clipped = len(design.cached_m) * len(design.cached_L) - len(cpoints)
    if cached is not None:
        if clipped:
            notes.append(f"{clipped} cached-context points clipped: L + m + 1 exceeds the {ctx}-token context")
        meta = {"model": model, "gpu": gpu, "tp": tp, "backend": backend, "design_hash": digest}
        files += formats.write_cached(out_dir, cached, meta)
    if plots:
        from pytest_ppd.profile import plots as plotting

        files += plotting.plot_profile(out_dir, prefill, decode, cached)
    in_grid = ({("prefill", f"isl={i}") for i in isls} | {("decode", f"isl={i},n={n}") for i, n in dpoints}
               | {("cached", f"m={m},L={L}") for m, L in cpoints})
    invalid = _invalid([r for k, r in store.records.items() if k in in_grid])
    manifest = {
        "tool": "pytest-ppd", "version": __version__, "command": list(command if command is not None else sys.argv),
        "backend": backend, "clock": runner.clock,
        "model": model, "gpu": gpu, "tp": tp, "num_gpus": num_gpus,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"pytest_ppd": __version__, "python": platform.python_version(), "numpy": np.__version__},
        "design": design.to_json(), "design_hash": digest,
        "engine": {"argv": engine.argv, "context_length": engine.context_length,
                   "max_context_length": engine.max_context_length, "max_kv_tokens": engine.max_kv_tokens,
                   "page_size": engine.page_size, "deployment": "one colocated engine, flushed between sweeps"},
        "points": {"prefill": len(isls), "decode": len(dpoints), "cached": len(cpoints), "cached_clipped": clipped,
                   "measured": len(store.records) - reused, "reused": reused, "invalid": len(invalid)},
        "compatible_with": "ai-dynamo 1.6.1 planner (perf_metrics._convert_*_profiling) and Mocker "
                           "(--planner-profile-data DIR or perf_data.npz)",
        "notes": notes,
        "files": {str(p.relative_to(out_dir)): _sha256(p) for p in files},
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    files.append(out_dir / MANIFEST_FILE)
    return ProfileResult(out_dir, design, digest, engine, prefill, decode, cached, tuple(invalid), tuple(notes),
                         tuple(files), len(store.records) - reused, reused, manifest)
