"""Measure interference: background decode streams on the decode-side server while an append runs.

    result = measure_interference(url, workload, background=8)
    result.delta_ms, result.score
"""

from __future__ import annotations

import asyncio
import time

from pytest_ppd.analysis.interference import Interference, measure_from_stamps
from pytest_ppd.client.runner import send_round, warm_contexts
from pytest_ppd.client.stream import RequestResult, StreamClient, build_body
from pytest_ppd.client.workload import Workload
from pytest_ppd.errors import MeasurementError

BACKGROUND_PROMPT = 256


async def _background(client: StreamClient, i: int, max_new: int, result: RequestResult) -> RequestResult:
    ids = [2000 + (i * 7919 + j * 104729) % 60000 for j in range(BACKGROUND_PROMPT)]
    return await client.send(build_body(ids, max_new), result)


async def measure_interference_async(url: str, wl: Workload, *, background: int = 8, settle_s: float = 0.4,
                                     api_key: str | None = None, max_new: int = 400) -> tuple[Interference, float]:
    """(interference, append batch latency in ms); background streams must outlast the append."""
    async with StreamClient(url, api_key=api_key) as client:
        await warm_contexts(client, wl, wl.point)
        holders = [RequestResult(sent_ns=0) for _ in range(background)]
        streams = [asyncio.ensure_future(_background(client, i, max_new, h)) for i, h in enumerate(holders)]
        await asyncio.sleep(settle_s)
        start = time.perf_counter_ns()
        results = await send_round(client, wl, wl.point, 0, 1)
        end = max(r.event_ns[0] if r.event_ns else time.perf_counter_ns() for r in results)
        await asyncio.sleep(settle_s / 2)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    stamps = [h.event_ns for h in holders if len(h.event_ns) > 1]
    if not stamps:
        raise MeasurementError("background streams produced no tokens")
    latency = max((r.ttft_ns or 0) for r in results) / 1e6
    return measure_from_stamps(stamps, start, end), latency


def measure_interference(url: str, wl: Workload, **kw: object) -> tuple[Interference, float]:
    return asyncio.run(measure_interference_async(url, wl, **kw))  # type: ignore[arg-type]
