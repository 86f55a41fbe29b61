"""The engine core schedules like SGLang: cache reuse, chunked prefill, pool limits, prefill first."""

import pytest

from pytest_ppd.sim.clock import VirtualRunner
from pytest_ppd.sim.costmodel import CostModel, CostProfile, Extend
from pytest_ppd.sim.engine import Engine, SimRequest
from pytest_ppd.specs import gpu_spec, model_spec

MODEL, GPU = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")


def make_engine(pool=500_000, **kw):
    return Engine(CostModel(MODEL, GPU, CostProfile()), pool, **kw)


def run(engine, *reqs):
    sim = VirtualRunner(engine)
    for r in reqs:
        sim.submit(r)
    sim.run()
    return sim


def test_second_request_reuses_shared_prefix():
    """A request sharing a 4096-token prefix reports cached_tokens == 4096 and is faster."""
    ctx = list(range(1, 4097))
    first = SimRequest("a", ctx + [5] * 64, 2, arrival_s=0.0)
    second = SimRequest("b", ctx + [9] * 64, 2, arrival_s=1.0)
    run(make_engine(), first, second)
    assert first.cached_tokens == 0 and second.cached_tokens == 4096
    assert (second.first_token_s - 1.0) < first.first_token_s / 3


def test_ttft_equals_cost_model_for_a_lone_request():
    """Virtual TTFT of one request = the cost model's extend time for its prompt."""
    engine = make_engine()
    req = SimRequest("a", list(range(1, 2049)), 1, arrival_s=0.0)
    run(engine, req)
    assert req.first_token_s == pytest.approx(engine.cost.extend_time([Extend(2048, 0)]))


def test_long_prompt_is_chunked():
    """A 20000-token prompt at chunk 8192 takes three extend steps."""
    engine = make_engine(chunked_prefill_size=8192)
    req = SimRequest("a", list(range(1, 20001)), 1, arrival_s=0.0)
    sim = run(engine, req)
    chunks = [Extend(8192, 0, logits=False), Extend(8192, 8192, logits=False), Extend(3616, 16384)]
    expected = sum(engine.cost.extend_time([c]) for c in chunks)
    assert req.first_token_s == pytest.approx(expected)
    assert sim.finished == [req]


def test_requests_that_do_not_fit_wait_for_the_pool():
    """With room for one request at a time the second waits until the first is done."""
    engine = make_engine(pool=1100, disable_radix_cache=True)
    a = SimRequest("a", list(range(1, 1001)), 4, arrival_s=0.0)
    b = SimRequest("b", list(range(2001, 3001)), 4, arrival_s=0.0)
    run(engine, a, b)
    assert b.forward_entry_s >= a.finished_s
    assert engine.used_tokens == 0


def test_pool_eviction_keeps_used_tokens_within_pool():
    """LRU eviction makes room; the tree plus running requests never exceed the pool."""
    engine = make_engine(pool=5000)
    peak = []
    sim = VirtualRunner(engine, on_event=lambda e, t: peak.append(engine.used_tokens))
    for i in range(10):
        sim.submit(SimRequest(str(i), [i + 1] * 1500, 3, arrival_s=i * 0.5))
    sim.run()
    assert len(sim.finished) == 10 and max(peak) <= 5000
    engine.cache.check_invariants()


def test_decode_steps_produce_one_token_each():
    engine = make_engine()
    req = SimRequest("a", list(range(1, 101)), 5, arrival_s=0.0)
    run(engine, req)
    assert len(req.output_ids) == 5 and req.finish_reason == {"type": "length", "length": 5}
    assert req.finished_s > req.first_token_s


def test_prefill_mode_finishes_after_first_token_and_caches_prompt():
    engine = make_engine(mode="prefill")
    req = SimRequest("a", list(range(1, 101)), 8, arrival_s=0.0)
    run(engine, req)
    assert len(req.output_ids) == 1 and engine.cache.total_size == 100


def test_decode_mode_emits_preset_token_and_reports_prefill_cache():
    engine = make_engine(mode="decode")
    req = SimRequest("a", list(range(1, 101)), 3, arrival_s=0.0, preset_first_token=42, preset_cached_tokens=64)
    run(engine, req)
    assert req.output_ids[0] == 42 and len(req.output_ids) == 3 and req.cached_tokens == 64
    assert engine.cache.total_size == 0


def test_batched_appends_take_longer_than_one():
    """BS=32 appends of m=2048 are compute-bound: the batch costs more than 10x one append."""
    engine = make_engine()
    one = engine.cost.extend_time([Extend(2048, 4096)])
    many = engine.cost.extend_time([Extend(2048, 4096)] * 32)
    assert many > 10 * one


def test_flush_refused_while_busy():
    engine = make_engine()
    engine.add(SimRequest("a", [1, 2, 3], 1, arrival_s=0.0))
    assert engine.flush() is False


def test_abort_releases_everything():
    engine = make_engine()
    req = SimRequest("a", list(range(1, 101)), 50, arrival_s=0.0)
    engine.add(req)
    engine.complete(engine.schedule(0.0), 0.01)
    engine.abort(req)
    # its prompt entered the tree when it was prefilled (SGLang's cache_unfinished_req): kept, unlocked, evictable
    assert engine.owned_tokens == 0 and engine.cache.protected_size == 0 and engine.idle()
    assert engine.used_tokens == engine.cache.total_size == 100 and engine.cache.evict(100) == 100


def test_a_prompt_being_prefilled_is_shared_with_a_request_admitted_meanwhile():
    """SGLang caches each prefilled chunk at once: the second of two requests with one long system prompt,
    admitted after the first's first chunk, reuses that chunk instead of computing it again."""
    engine = make_engine(chunked_prefill_size=1024)
    shared = list(range(1, 3001))
    first = SimRequest("a", shared + [5001], 4, arrival_s=0.0)
    engine.add(first)
    engine.complete(engine.schedule(0.0), 0.01)  # 1024 of its 3001 tokens
    second = SimRequest("b", shared + [5002], 4, arrival_s=0.01)
    engine.add(second)
    for _ in range(4):
        batch = engine.schedule(0.02)
        engine.complete(batch, 0.03)
    assert second.cached_tokens >= 1024 and engine.cache.check_invariants() is None
