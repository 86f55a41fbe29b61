"""The virtual-time deployment: exact modeled times, determinism, KV hand-off, link contention."""

import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.costmodel import CostProfile, Extend
from pytest_ppd.sim.deployment import NS, Deployment, to_ns

BASE = ["--model-path", "Llama-3.1-8B", "--sim-gpu", "H100-SXM"]
P = BASE + ["--disaggregation-mode", "prefill"]
D = BASE + ["--disaggregation-mode", "decode"]


def _ids(n, salt=0):
    return [1000 + (salt * 7919 + j * 31) % 100000 for j in range(n)]


def _pd(**kw):
    return Deployment.from_argvs(prefill=[P], decode=[D], **kw)


def test_a_cold_request_takes_the_overhead_plus_the_modeled_step():
    """TTFT of one request on an idle colocated engine = request overhead + the cost model's extend step."""
    dep = Deployment.from_argvs(colocated=[BASE])
    req = dep.submit(_ids(1000), 1)
    dep.run()
    node = dep.colocated[0]
    step = node.engine.cost.extend_time([Extend(1000, 0, admitted_prompt=1000)])
    assert req.ttft_ns == to_ns(CostProfile().request_overhead_s) + to_ns(step)
    assert req.meta_info["prompt_tokens"] == 1000 and req.meta_info["cached_tokens"] == 0
    assert req.meta_info["first_token_latency"] == req.ttft_ns / NS


def test_an_append_finds_its_context_cached():
    dep = Deployment.from_argvs(colocated=[BASE])
    ctx = _ids(2048)
    dep.submit(ctx, 1)
    dep.run()
    append = dep.submit(ctx + _ids(64, salt=9), 1)
    dep.run()
    assert append.meta_info["cached_tokens"] == 2048 and append.meta_info["prompt_tokens"] == 2112


def test_pd_ttft_is_prefill_then_the_kv_transfer_then_one_decode_step():
    dep = _pd()
    req = dep.submit(_ids(1000), 1)
    dep.run()
    p, d = dep.prefill[0], dep.decode[0]
    overhead = to_ns(CostProfile().request_overhead_s)
    prefill = to_ns(p.engine.cost.extend_time([Extend(1000, 0, admitted_prompt=1000)]))
    kv = to_ns(d.cfg.link.transfer_s(1000 * d.cfg.model.kv_bytes_per_token))
    decode = to_ns(d.engine.cost.decode_time([]))  # the first decode step emits the prefill's token
    assert req.ttft_ns == overhead + prefill + kv + decode
    assert req.output_ids and req.meta_info["completion_tokens"] == 1


def test_concurrent_hand_offs_queue_on_the_decode_link():
    """Two prompts prefilled in one batch: the second KV waits for the first on the one link."""
    dep = _pd()
    a, b = dep.submit(_ids(4000, 1), 1), dep.submit(_ids(4000, 2), 1)
    dep.run()
    link = dep.decode[0].transfer_ns(4000)
    assert abs(b.ttft_ns - a.ttft_ns) >= link - to_ns(0.001)  # one decode step of slack at most
    assert dep.decode[0].link_free_ns >= 2 * link


def test_pd_reports_the_prefill_sides_cached_tokens():
    dep = _pd()
    ctx = _ids(3000)
    dep.submit(ctx, 1)
    dep.run()
    req = dep.submit(ctx + _ids(100, 5), 1)
    dep.run()
    assert req.meta_info["cached_tokens"] == 3000


def test_same_submissions_give_bit_identical_times():
    def run():
        dep = _pd()
        handles = [dep.submit(_ids(500 + 100 * i, i), 3, at_ns=i * 1_000_000) for i in range(16)]
        dep.run()
        return [(h.token_ns, h.output_ids, h.meta_info) for h in handles]

    assert run() == run()


def test_requests_that_cannot_run_are_refused_with_sglangs_reason():
    dep = Deployment.from_argvs(colocated=[BASE])
    too_long = dep.submit(_ids(200_000), 1)
    empty = dep.submit([], 1)
    assert too_long.done and "context length" in too_long.error
    assert empty.done and "empty" in empty.error


def test_an_aborted_stream_frees_the_engine_for_a_flush():
    dep = Deployment.from_argvs(colocated=[BASE])
    stream = dep.submit(_ids(256), 400)
    dep.run(dep.now_ns + NS // 10)
    assert not stream.done and len(stream.token_ns) > 5
    dep.abort(stream)
    dep.run()
    assert stream.error == "aborted by the client" and dep.flush()
    assert dep.colocated[0].engine.cache.total_size == 0


def test_faults_and_mixed_topologies_are_refused():
    with pytest.raises(ConfigError, match="--ppd-backend=sim"):
        Deployment.from_argvs(colocated=[BASE + ["--sim-fault", "crash@3"]])
    with pytest.raises(ConfigError, match="not both"):
        Deployment.from_argvs(colocated=[BASE], prefill=[P], decode=[D])
    with pytest.raises(ConfigError, match="another role"):
        Deployment.from_argvs(prefill=[D], decode=[D])


def test_the_clock_never_runs_backwards():
    dep = Deployment.from_argvs(colocated=[BASE])
    dep.run(5 * NS)
    with pytest.raises(ValueError, match="already at"):
        dep.submit(_ids(10), 1, at_ns=NS)


def test_ppd_predict_is_the_virtual_engines_batch_latency(capsys):
    """`ppd predict` prints one JSON line per point: the engine-side TTFT of the batch, above the floor;
    the first cold prefill is larger than an append's, and a bad point is one usage line."""
    import json

    from pytest_ppd.cli import main

    assert main(["predict", "--points", "1,4096,32;8,4096,512"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["bs"], r["L"], r["m"]) for r in rows] == [(1, 4096, 32), (8, 4096, 512)]
    assert all(r["engine_ms"] > r["floor_ms"] > 0 for r in rows)
    dep = Deployment.from_argvs(colocated=[BASE])
    ctx = _ids(4096)
    dep.run_until_done([dep.submit(ctx, 1)])
    one = dep.submit(ctx + _ids(32, 3), 1)
    dep.run_until_done([one])
    assert rows[0]["engine_ms"] == pytest.approx(one.ttft_ns / 1e6, abs=1e-3)
    assert main(["predict", "--points", "1,4096"]) == 2
    assert "is not BS,L,M" in capsys.readouterr().err


def test_calls_due_together_run_in_the_order_pushed_or_reserved():
    """A client that pushes its arrivals one at a time (cluster replays) numbers them as if pushed at once."""
    dep = Deployment.from_argvs(colocated=[BASE])
    ran: list[str] = []
    first = dep.reserve(2)  # two calls that will be pushed later
    dep.call_at(5, lambda: ran.append("pushed"))
    dep.call_at(5, lambda: ran.append("reserved second"), seq=first + 1)
    dep.call_at(5, lambda: ran.append("reserved first"), seq=first)
    dep.run()
    assert ran == ["reserved first", "reserved second", "pushed"]


@pytest.mark.pure
def test_a_request_aborted_by_anothers_answer_keeps_only_the_tokens_it_received():
    """Engine and client share a request's id list; an abort from a callback in the middle of one step's
    deliveries drops the ids of that step not yet delivered (every id the client holds has its time)."""
    class Cancelling(Deployment):
        def _answered(self, flight):
            if flight.handle is handles[0]:
                self.abort(handles[1])

    dep = Cancelling.from_argvs(colocated=[BASE])
    dep.decode_runs = False
    handles = [dep.submit(_ids(50), 2), dep.submit(_ids(50, salt=1), 5)]
    dep.run()
    b = handles[1]
    assert b.error == "aborted by the client" and len(b.output_ids) == len(b.token_ns) == 1
