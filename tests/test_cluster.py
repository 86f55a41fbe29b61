"""Unit tests of pytest_ppd.cluster: workloads, traces, routing on the simulator, metrics, bad inputs, CLI
(strategies over time: test_cluster_strategies.py)."""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

from pytest_ppd.sim.radix import encode

from pytest_ppd.cluster import (BlockTokens, Slo, Study, WorkloadSpec, add_arguments, build, cmd_cluster, generate,
                                parse_deployment, read_trace, simulate, summarize, workload_spec, write_trace)
from pytest_ppd.cluster.deployments import Hardware, candidates, engine_config
from pytest_ppd.cluster.elastic import Resplit
from pytest_ppd.cluster.metrics import goodput_per_gpu, mean_ci, meets_slo, percentiles, slo_attainment
from pytest_ppd.cluster.routed import RoutedDeployment
from pytest_ppd.cluster.routers import parse_rule
from pytest_ppd.cluster.cli import ProgressBar
from pytest_ppd.cluster.runner import RequestResult, Run, watching
from pytest_ppd.cluster.strategy import SAMPLE_SEED_OFFSET, StaticBest, across_seeds, make_strategy
from pytest_ppd.cluster.workload import BLOCK_TOKENS, WORKLOADS, Trace, TraceRequest
from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.deployment import Deployment

MS = 1_000_000


def _gaps_s(trace: Trace) -> np.ndarray:
    return np.diff([r.timestamp_ms for r in trace.requests]) / 1e3


def test_seed003_workload_matches_its_targets():
    """Prompt and output means, the arrival rate and Poisson gaps (CV 1) land within a few % of the spec."""
    trace = generate(WORKLOADS["seed003"], requests=6000, rate=20.0, seed=3)
    prompts = np.array([r.input_length for r in trace.requests])
    outputs = np.array([r.output_length for r in trace.requests])
    gaps = _gaps_s(trace)
    assert len(trace) == 6000 and trace.sessions == 0
    assert prompts.mean() == pytest.approx(400, rel=0.05) and outputs.mean() == pytest.approx(150, rel=0.05)
    assert np.median(prompts) < prompts.mean()  # log-normal: right-skewed
    assert 1 / gaps.mean() == pytest.approx(20.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.08)


def test_gamma_arrivals_have_the_requested_burstiness():
    trace = generate(workload_spec("seed003", arrival="gamma", cv=3.0), requests=6000, rate=10.0, seed=1)
    gaps = _gaps_s(trace)
    assert 1 / gaps.mean() == pytest.approx(10.0, rel=0.1) and gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_sessions_grow_their_context_and_share_its_blocks():
    """Each later turn resends the conversation (input + output) plus new tokens; its hash ids extend the
    previous turn's, partial last block included; turns per session average the spec's mean."""
    spec = WORKLOADS["multiturn"]
    trace = generate(spec, requests=3000, rate=10.0, seed=2)
    by_session: dict[str, list[TraceRequest]] = {}
    for r in trace.requests:
        assert r.session_id is not None
        by_session.setdefault(r.session_id, []).append(r)
    assert np.mean([len(t) for t in list(by_session.values())[:-1]]) == pytest.approx(spec.turns, rel=0.12)
    for turns in by_session.values():
        assert turns[0].timestamp_ms is not None and turns[0].delay_ms is None
        for a, b in zip(turns, turns[1:]):
            assert b.timestamp_ms is None and b.delay_ms is not None
            assert b.input_length > a.input_length + a.output_length
            assert b.hash_ids[: len(a.hash_ids)] == a.hash_ids
            assert len(b.hash_ids) == -(-b.input_length // BLOCK_TOKENS)
    thinks = [r.delay_ms for r in trace.requests if r.delay_ms is not None]
    assert np.mean(thinks) == pytest.approx(spec.think_s * 1e3, rel=0.1)


def test_system_prompts_are_shared_blocks_in_zipf_popular_groups():
    trace = generate(WORKLOADS["sysprompt"], requests=3000, seed=4)
    heads = [r.hash_ids[:3] for r in trace.requests]
    counts = sorted(((heads.count(h), h) for h in set(heads)), reverse=True)
    assert len(counts) == 8 and counts[0][1] == (0, 1, 2)  # group 0 is the most popular
    assert counts[0][0] / counts[-1][0] > 4  # zipf 1.1 over 8 groups: 1 / (1/8)^1.1 ~ 9.8


def test_the_same_seed_draws_the_same_trace_and_a_new_rate_keeps_the_prompts():
    a, b = generate(WORKLOADS["chat"], seed=5), generate(WORKLOADS["chat"], seed=5)
    faster, other = generate(WORKLOADS["chat"], seed=5, rate=40.0), generate(WORKLOADS["chat"], seed=6)
    assert a == b and a != other
    assert [r.input_length for r in faster.requests] == [r.input_length for r in a.requests]
    starts = [[r.timestamp_ms for r in t.requests if r.timestamp_ms is not None] for t in (a, faster)]
    assert max(starts[1]) * 40.0 / WORKLOADS["chat"].rate == pytest.approx(max(starts[0]), rel=0.01)


def test_mooncake_jsonl_round_trips(tmp_path):
    """A written trace reads back equal; lines carry Mooncake's keys, plus session_id/delay on later turns."""
    trace = generate(WORKLOADS["chat"], requests=50, seed=1)
    path = write_trace(trace, tmp_path / "chat.jsonl")
    assert read_trace(path, name="chat") == trace
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert set(lines[0]) == {"timestamp", "input_length", "output_length", "hash_ids", "session_id"}
    later = next(x for x in lines if "delay" in x)
    assert set(later) == {"input_length", "output_length", "hash_ids", "session_id", "delay"}


@pytest.mark.parametrize("line, fix", [
    ("{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5}", "'hash_ids' must be a list"),
    ("{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [1]}", "one id per 512"),
    ("{\"input_length\": 10, \"output_length\": 5, \"hash_ids\": [1]}", "needs a 'timestamp'"),
    ("{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 5, \"hash_ids\": []}", "'input_length' must be"),
    ("not json", "not JSON"),
])
def test_a_bad_trace_line_is_one_config_error_naming_the_line(tmp_path, line, fix):
    path = tmp_path / "bad.jsonl"
    path.write_text("{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 5, \"hash_ids\": [7]}\n" + line)
    with pytest.raises(ConfigError, match=fix) as exc:
        read_trace(path)
    assert "bad.jsonl:2" in str(exc.value)


def test_shared_hash_ids_are_identical_token_prefixes_and_turns_carry_the_answer():
    tokens = BlockTokens(128256)
    a = TraceRequest(700, 4, (5, 6), 0)
    b = TraceRequest(1300, 4, (5, 6, 9), None, "s", 10)
    ids_a, ids_b = tokens.ids(a), tokens.ids(b)
    assert len(ids_a) == 700 and len(ids_b) == 1300 and ids_b[:700] == ids_a
    assert tokens.ids(TraceRequest(512, 1, (6,), 0)) == ids_a[512:] + list(tokens.block(6)[188:])
    answer = [11, 12, 13, 14]
    turn = tokens.turn_ids(b, a, ids_a, answer)
    assert turn[:704] == ids_a + answer and turn[704:] == ids_b[704:] and len(turn) == 1300
    c = TraceRequest(1400, 4, (5, 6, 9), None, "s", 10)
    assert tokens.turn_ids(c, b, turn, answer)[:1304] == turn + answer  # the spliced conversation goes on
    assert tokens.turn_ids(c, TraceRequest(700, 4, (5, 7), 0), ids_a, answer) == tokens.ids(c)
    for req, before, sent in ((b, a, ids_a), (c, b, turn), (c, TraceRequest(700, 4, (5, 7), 0), ids_a)):
        for sent_key in (encode(sent), None):  # grown from the key sent, or encoded: the same key, ids its view
            ids, key = tokens.turn(req, before, sent, answer, sent_key)
            assert list(ids) == tokens.turn_ids(req, before, sent, answer) and key == encode(list(ids))
    assert tokens.key(b) == encode(ids_b) and tokens.key(b, 600) == encode(ids_b[600:])


def _result(i, ttft_ms, itl_ms, n=11, *, sent_ms=0, error=None):
    first = (sent_ms + ttft_ms) * MS
    return RequestResult(i, None, 100, n, n, 0, sent_ms * MS, first, int(first + itl_ms * MS * (n - 1)),
                         "colocated0", None, error)


def test_metrics_on_planted_numbers():
    """TTFT, mean ITL = (last - first) / (n - 1), SLO attainment and per-GPU goodput, by hand."""
    rs = [_result(0, 100, 10), _result(1, 300, 10), _result(2, 100, 60), _result(3, 100, 10, error="boom")]
    slo = Slo(ttft_ms=200, itl_ms=50)
    assert rs[2].itl_ns == 60 * MS and rs[0].e2e_ns == 200 * MS
    assert [meets_slo(r, slo) for r in rs] == [True, False, False, False]
    assert slo_attainment(rs, slo) == 0.25
    assert goodput_per_gpu(rs, slo, span_ns=2_000 * MS, gpus=4) == pytest.approx(1 / 2 / 4)
    p = percentiles([10.0 * k for k in range(1, 101)])
    assert (p.p50, p.p90, p.p99) == pytest.approx((505.0, 901.0, 990.1))
    s = summarize(Run("agg-rr", 4, "planted", tuple(rs), 2_000 * MS, 0, 0.5, 0, 0.0), slo)
    assert s.completed == 3 and s.ttft_ms.p50 == 100 and s.goodput_rps == 0.5 and s.throughput_rps == 1.5
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and (lo, hi) == pytest.approx((2 - 2.4843, 2 + 2.4843), abs=1e-3)
    assert math.isnan(percentiles([]).p99)


@pytest.mark.parametrize("make, fix", [
    (lambda: parse_deployment("3P5D", 9), "3P5D is 8 GPUs but --gpus is 9"),
    (lambda: parse_deployment("agg", 8, rule="vllm-ppd"), "needs an xPyD split"),
    (lambda: parse_deployment("0P8D", 8), "x >= 1 and y >= 1"),
    (lambda: parse_deployment("fast", 8), "valid: agg, or an xPyD split"),
    (lambda: parse_deployment("agg", 8, policy="random"), "valid: rr, cache, sticky"),
    (lambda: parse_rule("dynamo"), "valid: dynamo-v0, vllm-ppd, llmd"),
    (lambda: parse_rule("llmd:lots"), "e.g. llmd:1024"),
    (lambda: workload_spec("sharegpt"), "valid: seed003"),
    (lambda: workload_spec("seed003", rate=-2.0), "rate must be > 0"),
    (lambda: workload_spec("sysprompt", system_tokens=1000), "multiple of 512"),
    (lambda: Slo(ttft_ms=0), "SLOs must be > 0"),
    (lambda: make_strategy("online", WORKLOADS["seed003"], 0), "valid: fixed, static, adaptive, dynamo, offline"),
    (lambda: make_strategy("static", WORKLOADS["seed003"], 0, search="greedy"), "valid: all, local"),
    (lambda: make_strategy("dynamo", WORKLOADS["seed003"], 0, predictor="arima"), "valid: constant, moving-average"),
    (lambda: Resplit(drain_s=-1.0), "must be >= 0 s"),
    (lambda: make_strategy("fixed", WORKLOADS["seed003"], 0), "needs a deployment"),
    (lambda: RoutedDeployment(prefill=[engine_config(Hardware(), "prefill")],
                              decode=[engine_config(Hardware(), "decode")], rule=parse_rule("llmd")),
     "decode engines that can prefill"),
])
def test_bad_inputs_are_one_config_error_naming_the_fix(make, fix):
    with pytest.raises(ConfigError, match=fix):
        make()


def test_the_round_robin_router_is_the_simulators_own():
    """Routed through the cluster's rr policy, a P/D deployment gives bit-identical token times."""
    hw = Hardware()
    base = Deployment(prefill=[engine_config(hw, "prefill")] * 2, decode=[engine_config(hw, "decode")] * 3)
    routed = build(parse_deployment("2P3D", 5))
    trace = generate(WORKLOADS["seed003"], requests=30, rate=50.0, seed=9)
    tokens = BlockTokens(128256)
    times = []
    for dep in (base, routed):
        hs = [dep.submit(tokens.ids(r), r.output_length, at_ns=r.timestamp_ms * MS) for r in trace.requests]
        dep.run()
        times.append([(h.prefill, h.engine, h.token_ns) for h in hs])
    assert times[0] == times[1]


def _two_turns(append: int) -> Trace:
    first = TraceRequest(2000, 8, (0, 1, 2, 3), 0, "s0")
    length = 2000 + 8 + append
    ids = tuple(range(-(-length // BLOCK_TOKENS)))
    return Trace("two", (first, TraceRequest(length, 8, ids, None, "s0", 100)))


@pytest.mark.parametrize("append, local", [(100, True), (3000, False)])
def test_conditional_disaggregation_keeps_small_appends_local_and_moves_only_missing_kv(append, local):
    """vllm-ppd: a 100-token append prefills on the decode engine that holds the conversation; a 3000-token
    one goes to the prefill engine and only the KV the decode engine lacks crosses the link."""
    run = simulate(parse_deployment("1P1D", 2, policy="cache", rule="vllm-ppd"), _two_turns(append))
    first, second = run.results
    assert first.ok and second.ok and first.prefill == "prefill0"  # 2000 uncached tokens: REMOTE
    assert (second.prefill is None) is local
    if local:
        assert second.cached_tokens >= 2000 and run.kv_bytes == 2000 * 131072
    else:
        decode_had = 2000 + 8 - 1  # input + output[:-1], page 1
        assert run.kv_bytes == (2000 + (second.prompt_tokens - decode_had)) * 131072


def test_dynamo_v0_rule_reads_uncached_tokens_and_the_prefill_queue():
    rule = parse_rule("dynamo-v0")
    assert not rule.local(1001, 0) and not rule.local(5000, 1)
    assert rule.local(1000, 0) and rule.local(5000, 2)
    assert parse_rule("llmd:2048").local(2047, 0) and not parse_rule("llmd:2048").local(2048, 0)


def test_sticky_keeps_a_session_on_one_engine_and_cache_aware_does_while_its_prefix_is_worth_it():
    """sticky never moves a session; sglang-router's cache_aware moves a turn only when the prefix it would
    find (the prompts it sent, not their answers) matches no more than cache_threshold (0.3) of the prompt."""
    trace = generate(WORKLOADS["multiturn"], requests=40, rate=20.0, seed=3)
    for policy in ("cache", "sticky"):
        run = simulate(parse_deployment("agg", 4, policy=policy), trace)
        last: dict[str, RequestResult] = {}
        moves = 0
        for r in run.results:
            before = last.get(r.session_id or "")
            if before is not None and before.engine != r.engine:
                moves += 1
                assert policy == "cache" and before.prompt_tokens <= 0.3 * r.prompt_tokens  # its tree: prompts
            last[r.session_id or ""] = r
        assert moves == (1 if policy == "cache" else 0)
        assert sum(r.cached_tokens for r in run.results) > 0.4 * sum(r.prompt_tokens for r in run.results)


def test_candidates_are_aggregated_then_every_split():
    assert [s.label for s in candidates(4)] == ["agg-rr", "1P3D-rr", "2P2D-rr", "3P1D-rr"]
    assert Study(8).gpus == 8 and isinstance(WORKLOADS["seed003"], WorkloadSpec)


def test_strategies_report_confidence_intervals_over_seeds_and_static_learns_from_its_own_sample():
    spec = workload_spec("seed003", requests=30, rate=12.0)
    report = across_seeds("fixed", spec, Study(4), [0, 1, 2], deployment=parse_deployment("1P3D"))
    mean, lo, hi = report.goodput_per_gpu
    assert len(report.outcomes) == 3 and lo < mean < hi and report.slo_attainment == (1.0, 1.0, 1.0)
    static = make_strategy("static", spec, 0)
    assert isinstance(static, StaticBest) and static.sample == generate(spec, seed=SAMPLE_SEED_OFFSET)
    outcome = static.run(generate(spec, seed=0), Study(4))
    assert [s.deployment for s in outcome.considered] == [s.label for s in candidates(4)]
    assert outcome.chosen in {s.deployment for s in outcome.considered}


def _cli(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return cmd_cluster(parser.parse_args(list(argv)))


def test_cmd_cluster_prints_a_table_and_appends_json_lines(tmp_path, capsys):
    out, trace = tmp_path / "runs.jsonl", tmp_path / "t.jsonl"
    assert _cli("--deployment", "1P3D", "--router", "cache", "--rule", "dynamo-v0", "--requests", "20",
                "--rate", "20", "--workload", "chat", "--write-trace", str(trace), "-o", str(out)) == 0
    text = capsys.readouterr().out
    assert "seed 0 1P3D-dynamo-v0-cache" in text and "20/20" in text
    line = json.loads(out.read_text())
    assert line["kind"] == "run" and line["completed"] == 20 and line["gpus"] == 4
    assert _cli("--gpus", "4", "--trace", str(trace), "-o", str(out)) == 0
    assert json.loads(out.read_text().splitlines()[-1])["completed"] == 20
    assert _cli("--deployment", "3P5D", "--gpus", "4", "-o", str(out)) == 2
    assert "3P5D is 8 GPUs but --gpus is 4" in capsys.readouterr().err


def test_a_watched_replay_reports_its_progress_to_the_end_and_an_unwatched_one_nothing():
    trace = generate(WORKLOADS["multiturn"], requests=450, rate=40.0, seed=2)
    seen: list[tuple[int, int, int]] = []
    with watching(lambda done, of, now_ns: seen.append((done, of, now_ns))):
        run = simulate(parse_deployment("agg", 4, policy="cache"), trace)
    assert len(seen) >= 200 and all(of == 450 for _, of, _ in seen)
    assert [d for d, _, _ in seen] == sorted({d for d, _, _ in seen}) and seen[-1][0] == 450
    assert [t for _, _, t in seen] == sorted(t for _, _, t in seen) and seen[-1][2] >= run.span_ns
    simulate(parse_deployment("agg", 4, policy="cache"), trace)
    assert seen[-1][0] == 450 and len(seen) == len(set(seen))  # nothing more once the context is left


def test_the_progress_bar_counts_each_replay_as_a_run_and_fits_one_row(capsys, monkeypatch):
    monkeypatch.setattr(shutil, "get_terminal_size", lambda: os.terminal_size((60, 24)))
    bar = ProgressBar("seed 0 offline")
    for done in range(6):  # a small window's replay, then the whole trace's
        bar(done, 5, done * 10**9)
    bar(0, 100_000, 0)
    bar(500, 100_000, 10**9)
    assert bar.runs == 2
    rows = capsys.readouterr().err.split("\r")
    assert "run 2" in rows[-1] and all(len(r) <= 59 for r in rows)
    bar.clear()
    assert capsys.readouterr().err == "\r" + " " * bar.width + "\r"


def test_cmd_cluster_draws_a_progress_bar_on_a_terminal_unless_quiet(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda: os.terminal_size((200, 24)))
    argv = ("--gpus", "4", "--requests", "300", "--rate", "40", "-o", str(tmp_path / "r.jsonl"))
    assert _cli(*argv) == 0
    err = capsys.readouterr().err
    assert "\r  seed 0 fixed run 1 [" in err and "300/300 requests" in err and "s virtual in" in err
    assert err.endswith("\r")  # cleared before the table's row
    assert _cli(*argv, "--quiet") == 0
    assert "\r" not in capsys.readouterr().err


def test_a_trace_request_with_too_few_hash_ids_is_one_error_naming_the_fix():
    with pytest.raises(ConfigError, match="needs 3 hash_ids of 512 tokens, it has 2"):
        BlockTokens(128256).key(TraceRequest(1100, 4, (1, 2), 0))
