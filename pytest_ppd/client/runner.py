"""Run the measurement protocol for one (point, path) and record every round.

1. flush the cache, 2. warm each conversation's context once, 3. send the BS
appends concurrently behind a start barrier, each with m fresh tokens,
4. prove the round (analysis/validity.py) and append its record at once,
5. repeat until the median's 95% CI is narrow enough or the cap is hit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from pytest_ppd.roofline import floor_ms
from pytest_ppd.analysis.stats import Summary, summarize
from pytest_ppd.analysis.validity import RequestView, round_reasons
from pytest_ppd.client.stream import RequestResult, StreamClient, build_body
from pytest_ppd.client.workload import Workload
from pytest_ppd.errors import MeasurementError
from pytest_ppd.grid import GridPoint
from pytest_ppd.records import Record, RecordStore, derived_rates
from pytest_ppd.specs import GpuSpec, ModelSpec

FLUSH_RETRIES = 50
FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """Where one path's requests go, and what is known about the servers behind it."""

    path: str  # "local" | "remote"
    url: str
    flush_urls: tuple[str, ...]
    api_key: str | None = None
    pool_tokens: int | None = None
    page_size: int = 1
    server_argv: tuple[tuple[str, ...], ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    # P/D: (the decode engine's pool, tokens it keeps reserved per request: SGLang's num_reserved_decode_tokens)
    decode_pool: tuple[int, int] | None = None

    def capacity_problem(self, point: GridPoint) -> str | None:
        """Why BS x (L + m) cannot stay cached on this path's servers, or None."""
        if self.pool_tokens is not None and point.total_tokens > self.pool_tokens:
            return (f"{point.id}: BS*(L+m) = {point.total_tokens} tokens > the {self.path} server's KV pool "
                    f"max_total_num_tokens = {self.pool_tokens}; its context cannot stay cached")
        if self.decode_pool is not None:
            pool, reserve = self.decode_pool
            need = point.bs * (point.L + point.m + max(reserve, 1))
            if need > pool:
                return (f"{point.id}: the decode server admits a request with {reserve} tokens reserved for its "
                        f"outputs (num_reserved_decode_tokens): BS*(L+m+{reserve}) = {need} tokens > its KV pool "
                        f"{pool}; the batch cannot decode together")
        return None


@dataclass(frozen=True)
class Settings:
    suite: str
    backend: str
    model: ModelSpec
    gpu: GpuSpec
    prefill_gpu: GpuSpec | None = None  # P's GPU where it differs: the REMOTE path's floor uses it
    min_reps: int = 3
    max_reps: int = 10
    ci_target: float = 0.05
    max_new_tokens: int = 1  # TTFT is the measurement; e2e then ends with it
    seed: int = 0
    n_gpus: int = 1  # GPUs one engine spans (tensor parallel): the floor divides by it
    run_id: str = ""
    timeout_s: float = 600.0  # per request: no stalled server can hang a run


@dataclass
class PointOutcome:
    point: GridPoint
    path: str
    records: list[Record]
    summary: Summary | None

    @classmethod
    def of(cls, point: GridPoint, path: str, records: Sequence[Record | dict[str, Any]]) -> "PointOutcome":
        """The one constructor: these rounds (Records, or stored JSON rounds) and the summary of the valid
        ones' batch latencies."""
        typed = [r if isinstance(r, Record) else Record.from_json(r) for r in records]
        valid = [r.batch_latency_ms for r in typed if r.valid and r.batch_latency_ms is not None]
        return cls(point, path, typed, summarize(valid) if valid else None)

    @property
    def valid(self) -> list[Record]:
        return [r for r in self.records if r.valid]

    @property
    def invalid(self) -> list[Record]:
        return [r for r in self.records if not r.valid]


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


async def flush_caches(client: StreamClient, urls: tuple[str, ...]) -> None:
    for url in urls:
        for _ in range(FLUSH_RETRIES):
            # SGLang 0.5.23 waits up to `timeout` seconds for in-flight work (P/D transfer queues too) to drain
            resp = await client.post_json(url.rstrip("/") + f"/flush_cache?timeout={FLUSH_TIMEOUT_S:g}")
            if resp.status_code == 200:
                break
            await asyncio.sleep(0.1)  # SGLang refuses while requests are still in flight
        else:
            raise MeasurementError(f"{url}/flush_cache kept answering HTTP {resp.status_code}; "
                                   "is another client using this server?")


async def warm_contexts(client: StreamClient, wl: Workload, point: GridPoint) -> None:
    if point.L == 0:
        return
    results = await asyncio.gather(*(client.send(build_body(f"[{wl.context_json(c)}]", 1))
                                     for c in range(point.bs)))
    failed = [r.error for r in results if r.error]
    if failed:
        raise MeasurementError(f"warm-up of {point.id} failed: {failed[0][0]}: {failed[0][1]}")


async def send_round(client: StreamClient, wl: Workload, point: GridPoint, round_: int,
                 max_new: int) -> list[RequestResult]:
    bodies = [build_body(wl.prompt_json(c, round_), max_new) for c in range(point.bs)]
    await client.prepare(point.bs)  # connections open before the start barrier: connecting is not TTFT
    gate = asyncio.Event()

    async def one(body: bytes) -> RequestResult:
        await gate.wait()
        return await client.send(body)

    tasks = [asyncio.ensure_future(one(body)) for body in bodies]
    await asyncio.sleep(0)  # every task is parked at the gate
    gate.set()
    return list(await asyncio.gather(*tasks))


def _record(results: list[RequestResult], point: GridPoint, round_: int, target: Target, settings: Settings,
            started_at: float) -> Record:
    hetero = settings.prefill_gpu if target.path == "remote" else None
    floor = floor_ms(settings.model, hetero or settings.gpu, point.bs, point.L, point.m) / settings.n_gpus
    ttfts = [_ms(r.ttft_ns) for r in results]
    firsts = [r.event_ns[0] for r in results if r.event_ns]
    span = _ms(max(firsts) - min(r.sent_ns for r in results)) if len(firsts) == len(results) else None
    batch = max(t for t in ttfts if t is not None) if all(t is not None for t in ttfts) and ttfts else None
    server_ttft = [r.meta_info["first_token_latency"] * 1e3 if "first_token_latency" in r.meta_info else None
                   for r in results]
    overhead = [t - s if t is not None and s is not None else None for t, s in zip(ttfts, server_ttft)]
    reasons = round_reasons(
        [RequestView(r.error, r.saw_done, r.meta_info) for r in results], bs=point.bs, L=point.L, m=point.m,
        max_new_tokens=settings.max_new_tokens, batch_span_ms=span, floor_ms=floor,
        pool_tokens=target.pool_tokens, page_size=target.page_size)
    return Record(
        suite=settings.suite, backend=settings.backend, path=target.path, model=settings.model.name,
        gpu=settings.gpu.name, prefill_gpu=hetero.name if hetero else None,
        bs=point.bs, L=point.L, m=point.m, cache_rate=point.cache_rate, round=round_,
        ttft_ms=ttfts, batch_latency_ms=batch, batch_span_ms=span, e2e_ms=[_ms(r.e2e_ns) for r in results],
        itl_ms_max=[_ms(max(r.itl_ns)) if r.itl_ns else None for r in results],
        prompt_tokens=[r.meta_info.get("prompt_tokens") for r in results],
        cached_tokens=[r.meta_info.get("cached_tokens") for r in results],
        completion_tokens=[r.meta_info.get("completion_tokens") for r in results],
        server_ttft_ms=server_ttft, client_overhead_ms=overhead,
        errors=[f"{r.error[0]}: {r.error[1]}" if r.error else None for r in results],
        valid=not reasons, invalid_reasons=[str(r) for r in reasons], invalid_kinds=[r.kind for r in reasons],
        floor_ms=floor,
        **derived_rates(point.bs, point.L, point.m, batch), started_at=started_at,
        versions=dict(target.versions), server_argv=[list(a) for a in target.server_argv], run_id=settings.run_id,
    )


def _under_pressure(point: GridPoint, pool_tokens: int | None) -> bool:
    """Would the previous round's cached appends push contexts out of the pool?

    A radix cache evicts least-recently-used leaves; once a conversation's old
    append is evicted its context becomes a leaf older than the other old
    appends, and goes next. Re-warming the contexts before each round makes
    them the most recently used, so the old appends go first.
    """
    return pool_tokens is not None and point.bs * (point.L + 2 * point.m) > 0.8 * pool_tokens


def _enough(valid_ms: list[float], total: int, settings: Settings) -> bool:
    if total >= settings.max_reps:
        return True
    if total >= settings.min_reps and not valid_ms:
        return True  # every round so far invalid: more of the same proves nothing new
    if len(valid_ms) < settings.min_reps:
        return False
    return summarize(valid_ms).ci_rel_width <= settings.ci_target


class HttpDriver:
    """The protocol's three moves over HTTP: flush the servers, warm contexts, send a round."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target, self.timeout_s = target, timeout_s
        self._client: StreamClient | None = None

    async def __aenter__(self) -> "HttpDriver":
        self._client = await StreamClient(self.target.url, api_key=self.target.api_key,
                                          timeout_s=self.timeout_s).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.__aexit__(*exc)

    async def flush(self) -> None:
        assert self._client is not None
        await flush_caches(self._client, self.target.flush_urls)

    async def warm(self, wl: Workload, point: GridPoint) -> None:
        assert self._client is not None
        await warm_contexts(self._client, wl, point)

    async def round(self, wl: Workload, point: GridPoint, round_: int, max_new: int) -> list[RequestResult]:
        assert self._client is not None
        return await send_round(self._client, wl, point, round_, max_new)


class Driver(Protocol):
    """What the protocol needs of a backend (HttpDriver; client.virtual.VirtualDriver)."""

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def flush(self) -> None: ...
    async def warm(self, wl: Workload, point: GridPoint) -> None: ...
    async def round(self, wl: Workload, point: GridPoint, round_: int, max_new: int) -> list[RequestResult]: ...


async def measure_point_async(target: Target, point: GridPoint, settings: Settings,
                              store: RecordStore, flush: bool = True, slot: int = 0,
                              driver: Driver | None = None) -> PointOutcome:
    """flush=False keeps the cache of the previous point of the same (BS, L), whose contexts are these;
    slot (the point's index in its row) keeps its appends' first ids apart from the other points'.
    driver: how requests reach the servers (default: HTTP to target.url)."""
    previous = [Record.from_json(r) for r in store.rounds_for(point.bs, point.L, point.m, target.path)]
    records: list[Record] = list(previous)
    wl = Workload(point, settings.model.vocab_size, settings.seed, target.path, slot=slot,
                  rounds_cap=settings.max_reps)
    async with driver or HttpDriver(target, settings.timeout_s) as drv:
        if flush:
            await drv.flush()
        await drv.warm(wl, point)  # a no-op prefill of 1 token when the context is cached
        round_ = max((r.round for r in previous), default=-1) + 1
        pressure = _under_pressure(point, target.pool_tokens)
        while not _enough([r.batch_latency_ms for r in records if r.valid and r.batch_latency_ms is not None],
                          len(records), settings):
            if pressure and round_ > 0:
                await drv.warm(wl, point)  # see _under_pressure
            started = time.time()
            results = await drv.round(wl, point, round_, settings.max_new_tokens)
            record = _record(results, point, round_, target, settings, started)
            store.append(record)
            records.append(record)
            round_ += 1
    store.mark_done(point.bs, point.L, point.m, target.path, len(records))
    return PointOutcome.of(point, target.path, records)


def measure_point(target: Target, point: GridPoint, settings: Settings, store: RecordStore,
                  flush: bool = True, slot: int = 0, driver: Driver | None = None) -> PointOutcome:
    """Blocking wrapper for pytest tests."""
    return asyncio.run(measure_point_async(target, point, settings, store, flush, slot, driver))
