"""Metrics of a cluster run: pure functions of its request results, each stating its formula.

    s = summarize(run, Slo(ttft_ms=500, itl_ms=50))
    s.ttft_ms.p99, s.slo_attainment, s.goodput_per_gpu

Percentiles are numpy's linear interpolation over the requests that produced the quantity; a request
that failed or came back short counts against SLO attainment and goodput, never in the latency tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from pytest_ppd.cluster.runner import RequestResult, Run
from pytest_ppd.errors import ConfigError

NS_PER_MS = 1e6


@dataclass(frozen=True)
class Slo:
    """Per-request service-level objectives: TTFT and mean ITL (TPOT), in ms."""

    ttft_ms: float = 500.0
    itl_ms: float = 50.0

    def __post_init__(self) -> None:
        if not (self.ttft_ms > 0 and self.itl_ms > 0):
            raise ConfigError(f"SLOs must be > 0 ms, got TTFT {self.ttft_ms} ms and ITL {self.itl_ms} ms")


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p99: float


def percentiles(values: Iterable[float]) -> Percentiles:
    """P50, P90, P99 (linear interpolation); NaN where there are no values."""
    arr = np.fromiter(values, dtype=float)
    if arr.size == 0:
        return Percentiles(math.nan, math.nan, math.nan)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return Percentiles(float(p50), float(p90), float(p99))


def meets_slo(r: RequestResult, slo: Slo) -> bool:
    """Answered in full, TTFT <= the TTFT SLO and mean ITL <= the ITL SLO (a one-token answer has no ITL)."""
    if not r.ok or r.ttft_ns is None:
        return False
    itl = r.itl_ns
    return r.ttft_ns <= slo.ttft_ms * NS_PER_MS and (itl is None or itl <= slo.itl_ms * NS_PER_MS)


def slo_attainment(results: Sequence[RequestResult], slo: Slo) -> float:
    """Requests meeting both SLOs / requests."""
    return sum(meets_slo(r, slo) for r in results) / len(results) if results else 0.0


def goodput_rps(results: Sequence[RequestResult], slo: Slo, span_ns: int) -> float:
    """Requests meeting both SLOs / span (first send to last token), per second."""
    return sum(meets_slo(r, slo) for r in results) / (span_ns / 1e9) if span_ns > 0 else 0.0


def goodput_per_gpu(results: Sequence[RequestResult], slo: Slo, span_ns: int, gpus: int) -> float:
    """DistServe's per-GPU goodput of one run: requests meeting both SLOs per second per GPU."""
    return goodput_rps(results, slo, span_ns) / gpus


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean over independent runs (seeds); one run: no width."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    half = float(stats.t.ppf((1 + level) / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """One run's metrics (one JSON line in the results file)."""

    deployment: str
    gpus: int
    workload: str
    requests: int
    completed: int  # answered in full
    ttft_ms: Percentiles
    itl_ms: Percentiles
    e2e_ms: Percentiles
    slo_ttft_ms: float
    slo_itl_ms: float
    slo_attainment: float
    goodput_rps: float
    goodput_per_gpu: float
    throughput_rps: float  # completed / span
    span_s: float
    local_fraction: float  # requests prefilled where they were decoded
    cached_fraction: float  # prompt tokens served from a prefix cache / prompt tokens
    kv_bytes: int
    busy_fraction: float
    wall_s: float
    events: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(run: Run, slo: Slo) -> Summary:
    """Every metric of a run."""
    rs = run.results
    done = [r for r in rs if r.ok]
    span_s = run.span_ns / 1e9
    prompt = sum(r.prompt_tokens for r in done)
    return Summary(
        deployment=run.deployment, gpus=run.gpus, workload=run.workload, requests=len(rs), completed=len(done),
        ttft_ms=percentiles(r.ttft_ns / NS_PER_MS for r in done if r.ttft_ns is not None),
        itl_ms=percentiles(r.itl_ns / NS_PER_MS for r in done if r.itl_ns is not None),
        e2e_ms=percentiles(r.e2e_ns / NS_PER_MS for r in done if r.e2e_ns is not None),
        slo_ttft_ms=slo.ttft_ms, slo_itl_ms=slo.itl_ms, slo_attainment=slo_attainment(rs, slo),
        goodput_rps=goodput_rps(rs, slo, run.span_ns),
        goodput_per_gpu=goodput_per_gpu(rs, slo, run.span_ns, run.gpus),
        throughput_rps=len(done) / span_s if span_s > 0 else 0.0, span_s=span_s,
        local_fraction=sum(r.prefill is None for r in done) / len(done) if done else 0.0,
        cached_fraction=sum(r.cached_tokens for r in done) / prompt if prompt else 0.0,
        kv_bytes=run.kv_bytes, busy_fraction=run.busy_fraction, wall_s=run.wall_s, events=run.events,
    )
