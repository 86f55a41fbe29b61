"""The sweeps, run on a virtual-time deployment, every request's cache state proven.

Each sweep runs on its own colocated engine (Dynamo profiles prefill and decode on aggregated engines too,
``convert_config`` in its profiler), built from the served sim's exact argv, so the pool, chunk size and
cost model are the served sim's. Times come from the virtual clock: TTFT = first token - sent.

- prefill: per ISL, ``reps`` requests one at a time (concurrency 1), each with fresh ids; proof:
  ``cached_tokens == 0``. Dynamo measures one request with the radix cache disabled; we keep the cache on
  so that a reused prompt would show, and prove none was.
- decode: per (ISL, concurrency n), on a flushed engine: warm the n prompts (max_new_tokens=1), then send
  the same n at once with OSL new tokens each; proof: each ``cached_tokens`` equals the page-aligned
  ``isl - 1`` (SGLang never reuses a prompt's last token), which Dynamo's warm-up only hopes for.
  ITL = (last token - first token) / (OSL - 1) per request (AIPerf's), throughput = output tokens /
  (last token - first send) (AIPerf's benchmark duration).
- cached: per L on a flushed engine, warm a context of L ids once, then per m ``reps`` appends of m fresh
  ids, one at a time; proof: ``cached_tokens`` equals the page-aligned L.

A request that fails its proof is data: its point record says why, and it is left out of every table.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pytest_ppd.client.stream import RequestResult
from pytest_ppd.errors import ConfigError, MeasurementError
from pytest_ppd.profile.engines import ProfileEngine

RECORDS_FILE = "profile_records.jsonl"
_LOW = 1000  # clear of special ids, as the grid's workloads (client/workload.py)
Progress = Callable[[str, int, int], None]  # (sweep, points done, points in the sweep)


@dataclass(frozen=True)
class PointRecord:
    """One measured point: every request's raw numbers and proof, nothing derived but the reasons."""

    sweep: str
    key: str
    design: str
    isl: int  # prompt length (L + m for the cached sweep)
    concurrency: int = 1
    m: int = 0
    L: int = 0
    osl: int = 1
    ttft_ms: list[float | None] = field(default_factory=list)  # per request
    itl_ms: list[float | None] = field(default_factory=list)  # per request (decode)
    output_tokens: int = 0
    duration_ms: float | None = None  # first send to last token (decode)
    cached_tokens: list[int | None] = field(default_factory=list)
    expected_cached: int = 0
    valid: list[bool] = field(default_factory=list)  # per request
    invalid_reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PointRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def valid_ttfts(self) -> list[float]:
        return [t for t, ok in zip(self.ttft_ms, self.valid) if ok and t is not None]


def median_ttft_ms(rec: PointRecord) -> float | None:
    """Median TTFT over the proven requests (None if none was)."""
    ok = rec.valid_ttfts()
    return statistics.median(ok) if ok else None


def decode_itl_ms(rec: PointRecord) -> float | None:
    """AIPerf's inter_token_latency.avg: the mean over requests of (last - first token) / (OSL - 1)."""
    if not rec.valid or not all(rec.valid) or any(v is None for v in rec.itl_ms):
        return None
    return statistics.fmean(v for v in rec.itl_ms if v is not None)


def decode_thpt_per_gpu(rec: PointRecord, num_gpus: int) -> float | None:
    """AIPerf's output_token_throughput / num_gpus: output tokens / (last token - first send) / GPUs."""
    if decode_itl_ms(rec) is None or not rec.duration_ms:
        return None
    return rec.output_tokens / (rec.duration_ms / 1e3) / num_gpus


class ProfileStore:
    """profile_records.jsonl: one PointRecord a line, appended and fsynced; a resumed run skips what it holds."""

    def __init__(self, out_dir: Path, design: str) -> None:
        self.path, self.design = out_dir / RECORDS_FILE, design
        self.records: dict[tuple[str, str], PointRecord] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = PointRecord.from_json(json.loads(line))
                except (ValueError, TypeError):
                    continue  # a torn last line from a crash
                if rec.design == design:
                    self.records[(rec.sweep, rec.key)] = rec

    def done(self, sweep: str, key: str) -> bool:
        return (sweep, key) in self.records

    def append(self, rec: PointRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(asdict(rec)) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[(rec.sweep, rec.key)] = rec


class PromptIds:
    """Exact prompts whose first id is new since the last reset(), so none can hit the prefix cache."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        self.vocab, self.seed, self.count = vocab_size, seed, 0

    def reset(self) -> None:
        self.count = 0

    def fresh(self, n: int) -> list[int]:
        k = self.count
        self.count += 1
        if k >= self.vocab - 1 - 2 * _LOW:
            raise ConfigError(f"{k} distinct prompts needed between flushes but the vocabulary offers "
                              f"{self.vocab - 1 - 2 * _LOW}; lower --decode-max-concurrency")
        digest = hashlib.sha256(repr((self.seed, k, n)).encode()).digest()
        ids = np.random.default_rng(int.from_bytes(digest[:8], "little")).integers(_LOW, self.vocab - 1, n)
        ids[0] = _LOW + k
        return ids.tolist()


def warm(engine: ProfileEngine, prompts: Sequence[list[int]]) -> None:
    """Put the prompts in the prefix cache (one output token each)."""
    failed = [r.error for r in engine.send(prompts, 1) if r.error]
    if failed:
        raise MeasurementError(f"warm-up failed: {failed[0][0]}: {failed[0][1]}")


def proof(req: RequestResult, expected_cached: int, max_new: int, why: str) -> list[str]:
    """Why this request cannot be counted (empty: it is proven)."""
    if req.error is not None:
        return [f"error: {req.error[0]}: {req.error[1]}"]
    reasons = []
    cached = req.meta_info.get("cached_tokens")
    if cached != expected_cached:
        reasons.append(f"cached_tokens {cached} != {expected_cached} ({why})")
    if req.n_output_ids != max_new or not req.event_ns:
        reasons.append(f"{req.n_output_ids} output tokens, expected {max_new}")
    return reasons


def itl_ms(req: RequestResult) -> float | None:
    """(last token - first token) / (tokens - 1): AIPerf's inter-token latency of one request."""
    if len(req.event_ns) < 2 or req.n_output_ids < 2:
        return None
    return (req.event_ns[-1] - req.event_ns[0]) / (req.n_output_ids - 1) / 1e6


def _aligned(tokens: int, page: int) -> int:
    return tokens - tokens % page


def _record(sweep: str, key: str, design: str, reqs: list[RequestResult], expected: int, max_new: int, why: str,
            **extra: Any) -> PointRecord:
    valid, reasons = [], []
    for i, req in enumerate(reqs):
        problems = proof(req, expected, max_new, why)
        valid.append(not problems)
        reasons += [f"request {i}: {p}" for p in problems]
    return PointRecord(sweep, key, design, ttft_ms=[r.ttft_ns / 1e6 if r.ttft_ns else None for r in reqs],
                       cached_tokens=[r.meta_info.get("cached_tokens") for r in reqs], expected_cached=expected,
                       valid=valid, invalid_reasons=reasons, osl=max_new, **extra)


def _report(progress: Progress | None, sweep: str, done: int, total: int) -> None:
    if progress is not None:
        progress(sweep, done, total)


def measure_prefill(engine: ProfileEngine, isls: Sequence[int], reps: int, osl: int, store: ProfileStore, *,
                    seed: int = 0, progress: Progress | None = None) -> None:
    ids = PromptIds(engine.vocab_size, seed)
    for i, isl in enumerate(isls):
        key = f"isl={isl}"
        if not store.done("prefill", key):
            reqs = [engine.send([ids.fresh(isl)], osl)[0] for _ in range(reps)]
            store.append(_record("prefill", key, store.design, reqs, 0, osl, "a cold prefill reuses nothing",
                                 isl=isl))
        _report(progress, "prefill", i + 1, len(isls))


def measure_decode(engine: ProfileEngine, points: Sequence[tuple[int, int]], osl: int,
                   store: ProfileStore, *, seed: int = 0, progress: Progress | None = None) -> None:
    fresh = True
    for i, (isl, n) in enumerate(points):
        key = f"isl={isl},n={n}"
        if not store.done("decode", key):
            if fresh:
                engine.reset()
                fresh = False
            engine.flush()
            ids = PromptIds(engine.vocab_size, seed)
            prompts = [ids.fresh(isl) for _ in range(n)]
            warm(engine, prompts)
            reqs = engine.send(prompts, osl)
            ends = [r.event_ns[-1] for r in reqs if r.event_ns]
            duration = (max(ends) - min(r.sent_ns for r in reqs)) / 1e6 if ends else None
            store.append(_record("decode", key, store.design, reqs, _aligned(isl - 1, engine.facts.page_size), osl,
                                 "the warm-up should have cached the prompt", isl=isl, concurrency=n,
                                 itl_ms=[itl_ms(r) for r in reqs], output_tokens=sum(r.n_output_ids for r in reqs),
                                 duration_ms=duration))
        _report(progress, "decode", i + 1, len(points))


def measure_cached(engine: ProfileEngine, points: Sequence[tuple[int, int]], reps: int,
                   store: ProfileStore, *, seed: int = 0, progress: Progress | None = None) -> None:
    fresh = True
    rows: dict[int, list[int]] = {}
    for m, L in points:
        rows.setdefault(L, []).append(m)
    done = 0
    for L, ms in rows.items():
        todo = [m for m in ms if not store.done("cached", f"m={m},L={L}")]
        if todo:
            if fresh:
                engine.reset()
                fresh = False
            engine.flush()
            ids = PromptIds(engine.vocab_size, seed)
            context = ids.fresh(L) if L else []
            if L:
                warm(engine, [context])
            for m in todo:
                reqs = [engine.send([context + ids.fresh(m)], 1)[0] for _ in range(reps)]
                store.append(_record("cached", f"m={m},L={L}", store.design, reqs,
                                     _aligned(L, engine.facts.page_size), 1,
                                     "the context should be cached and the append not", isl=L + m, m=m, L=L))
        done += len(ms)
        _report(progress, "cached", done, len(points))
