"""Interference: the p99 inter-token latency of background decode streams while an append runs LOCAL.

Measured for the grid's largest cells (most new tokens per batch), where seed 000
saw "severe interference". Physics: prefill runs ahead of decode steps, so the
decoders stall for about as long as the append's prefill takes.
"""

import pytest

from pytest_ppd.client.interference import measure_interference
from pytest_ppd.client.workload import Workload


def _largest(grid, k=2):
    return sorted(grid, key=lambda p: (p.bs * p.m, p.bs * p.L))[-k:]


@pytest.mark.parametrize("rank", [0, 1], ids=["largest", "second"])
def test_interference_tracks_the_append(rank, ppd_session):
    config = ppd_session.config
    if config.backend in ("replay", "external") and "local" not in (config.urls or {}):
        pytest.skip("interference needs a live LOCAL server")
    points = _largest(config.grid)
    point = points[-1 - rank] if rank < len(points) else points[0]
    target = ppd_session.target("local")
    if target.pool_tokens is not None and point.total_tokens > target.pool_tokens:
        pytest.skip(f"{point.id} is infeasible on this pool")
    wl = Workload(point, config.model.vocab_size, seed=7, path="interference")
    result, latency_ms = measure_interference(target.url, wl, api_key=target.api_key)
    ppd_session.store.append_json("interference", {
        "bs": point.bs, "L": point.L, "m": point.m, "path": "local", "append_latency_ms": latency_ms,
        "p99_itl_before_ms": result.p99_before_ms, "p99_itl_during_ms": result.p99_during_ms,
        "delta_ms": result.delta_ms, "score": result.score, "n_before": result.n_before,
        "n_during": result.n_during})
    ppd_session.note(f"interference {point.id}: p99 ITL {result.p99_before_ms:.1f} -> {result.p99_during_ms:.1f} ms "
                     f"(delta {result.delta_ms:.1f} ms, score {result.score:.2f}) while the append took {latency_ms:.1f} ms")
    assert result.delta_ms >= 0
    assert 0.0 <= result.score < 1.0
    # The decoders stall while the prefill runs: the worst gap covers most of the append.
    assert result.p99_during_ms >= 0.5 * latency_ms
