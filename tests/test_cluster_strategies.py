"""Cluster strategies over time: elastic deployments, Dynamo's SLA planner, the adaptive and offline strategies."""

import argparse
import dataclasses
import json
import math

import pytest

from pytest_ppd.cluster import (Slo, Study, add_arguments, cmd_cluster, generate,
                                parse_deployment, simulate, summarize, workload_spec)
from pytest_ppd.cluster.deployments import Hardware, engine_config
from pytest_ppd.cluster.dynamic import Offline, Online, windows
from pytest_ppd.cluster.elastic import ElasticDeployment, Observed, Resplit
from pytest_ppd.cluster.planners import DynamoSla, LoadBalance, ProfileModel, global_budget
from pytest_ppd.cluster.runner import Run, replay_run
from pytest_ppd.cluster.study import hill_climb
from pytest_ppd.cluster.workload import WORKLOADS, Trace
from pytest_ppd.profile.formats import DecodeTable, PrefillTable, write_decode, write_prefill
from pytest_ppd.profile.plan import Target, plan

MS = 1_000_000


def _cli(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return cmd_cluster(parser.parse_args(list(argv)))


# -- strategies over time ---------------------------------------------------------------------------
def _elastic(gpus: int, prefill: int, cost: Resplit) -> ElasticDeployment:
    hw = Hardware()
    return ElasticDeployment(engine_config(hw, "prefill"), engine_config(hw, "decode"), gpus=gpus, prefill=prefill,
                             cost=cost)


def test_an_elastic_deployment_left_alone_is_the_static_split_token_for_token():
    trace = generate(WORKLOADS["seed003"], requests=40, rate=60.0, seed=4)
    static, elastic = simulate(parse_deployment("2P3D"), trace), replay_run(_elastic(5, 2, Resplit()), trace, "e", 5)
    assert static.results == elastic.results and static.kv_bytes == elastic.kv_bytes


def test_a_resplit_drains_the_moved_engines_then_restarts_them_in_the_other_role():
    """1P3D asked for 3P1D at 1 s: two decode engines leave the router at once (the ones holding least),
    finish what they hold, stop no earlier than drain_s after leaving, come back startup_s later as prefill
    engines with new names; no request is lost and none is routed to an engine while it is away."""
    dep = _elastic(4, 1, Resplit(drain_s=0.5, startup_s=2.0))
    dep.call_at(1_000_000_000, lambda: None if dep.resplit(3) == 2 else pytest.fail("moved != 2"))
    trace = generate(WORKLOADS["seed003"], requests=120, rate=30.0, seed=1)
    run = replay_run(dep, trace, "e", 4)
    assert all(r.ok for r in run.results)
    first, *_, last = dep.timeline
    assert (first.prefill, first.decode) == (1, 3) and (last.prefill, last.decode, last.moving) == (3, 1, 0)
    assert dep.moves == 2 and len(dep.retired) == 2 and {n.role for n in dep.retired} == {"decode"}
    away = {n.name for n in dep.retired}
    assert not any(r.engine in away and r.sent_ns > 1_000_000_000 for r in run.results)
    new = {r.prefill for r in run.results if r.sent_ns > 3_500_000_000}
    assert new == {"prefill0", "prefill4", "prefill5"}
    assert dep.down_ns >= 2 * 2.5e9 and dep.stable and dep.target() == 3


def _planted_profile(directory):
    """TTFT = 5 + ISL / 20 ms; ITL = 5 + 0.2 n ms at context 500 and 5 + 0.4 n at 1500 (n: concurrency)."""
    isl = (100, 1100, 2100)
    ttft = tuple(5 + i / 20 for i in isl)
    write_prefill(directory, PrefillTable(isl, ttft, tuple(i / t * 1000 for i, t in zip(isl, ttft))))
    rows = [(n * ctx / 100_000, ctx, 5 + k * n, n / (5 + k * n) * 1000) for ctx, k in ((500, 0.2), (1500, 0.4))
            for n in (1, 10, 100)]
    write_decode(directory, DecodeTable(*[tuple(c) for c in zip(*rows)], max_kv_tokens=100_000))
    (directory / "profile_manifest.json").write_text(json.dumps({"model": "Llama-3.1-8B", "gpu": "H100-SXM"}))
    return ProfileModel.load(directory)


def test_dynamo_planner_applies_its_correction_factors_predictor_and_gpu_budget(tmp_path):
    """p_correction = TTFT / TTFT(ISL), capped at 1 in num_p; d_correction = ITL / ITL(concurrency, ISL +
    OSL/2) divides the ITL target; the counts are profile/plan.py's for the corrected inputs; over the
    pool, Dynamo's budget scales both down."""
    model = _planted_profile(tmp_path)
    assert model.expected_ttft_ms(600) == 35.0 and model.expected_itl_ms(10, 1000) == pytest.approx(8.0)
    dyn = DynamoSla(model, Slo(500, 25), interval_s=1.0)
    obs = Observed(1.0, 40, 600.0, 40, 100.0, ttft_ms=17.5, itl_ms=16.0, duration_s=2.0)
    x = dyn.decide(obs, prefill=2, decode=8, gpus=10)
    concurrency = 40 / 8 * 2.0 / 1.0
    assert dyn.p_correction == 0.5 and dyn.d_correction == pytest.approx(16 / model.expected_itl_ms(concurrency, 650))
    itl = 25 / dyn.d_correction
    want_p = plan(tmp_path, Target(500, itl, 40 * 0.5, 600, 100)).prefill_dynamo
    want_d = plan(tmp_path, Target(500, itl, 40.0, 600, 100)).decode
    assert dyn.last == (want_p, want_d) and x == global_budget(want_p, want_d, 10)[0]
    assert global_budget(3, 4, 10) == (3, 4) and global_budget(6, 12, 9) == (3, 6) and global_budget(1, 1, 1) == (0, 0)
    assert dyn.decide(dataclasses.replace(obs, answered=0, ttft_ms=math.nan), 2, 8, 10) is None  # Dynamo skips


def test_load_balance_moves_only_past_its_hysteresis_and_toward_equal_load_per_gpu(tmp_path):
    lb = LoadBalance(_planted_profile(tmp_path), Slo(500, 25), interval_s=1.0)
    p, d = lb.needs(40.0, 600.0, 100.0)
    assert p == pytest.approx(40 * 600 / lb.model.prefill_thpt_per_gpu(600))
    obs = Observed(1.0, 40, 600.0, 40, 100.0, 20.0, 8.0, 1.0)
    balanced = lb.split(40.0, 600.0, 100.0, 10)
    assert balanced == round(10 * p / (p + d)) and lb.decide(obs, balanced, 10 - balanced, 10) is None
    assert balanced == 5 and lb.decide(obs, 1, 9, 10) == 5  # 1P9D: prefill GPUs 10x as loaded as decode's


def test_hill_climb_stops_at_a_local_best_without_trying_every_split():
    s = summarize(Run("x", 1, "w", (), 1, 0, 0.0, 0, 0.0), Slo())
    shaped = {x: dataclasses.replace(s, slo_attainment=1 - abs(x - 6) / 10) for x in range(1, 16)}
    best, seen = hill_climb(shaped.__getitem__, 2, 1, 15)
    assert best == 6 and sorted(seen) == [1, 2, 3, 4, 5, 6, 7]


def test_windows_cut_by_send_time_keep_sessions_whole_and_start_each_at_zero():
    trace = generate(WORKLOADS["multiturn"], requests=200, rate=20.0, seed=1)
    parts = windows(trace, 2.0)
    assert sum(len(p) for p in parts) == len(trace)
    for p in parts:
        stamps = [r.timestamp_ms for r in p.requests if r.timestamp_ms is not None]
        assert not stamps or 0 <= min(stamps) and max(stamps) < 2000
        firsts = {r.session_id for r in p.requests if r.timestamp_ms is not None}
        assert {r.session_id for r in p.requests} == firsts


def _phased(gpus: int) -> Trace:
    """Decode-heavy for 6 s, then prefill-heavy for 6 s."""
    out = []
    for k, name in enumerate(("decode-heavy", "prefill-heavy")):
        part = generate(workload_spec(name, requests=4 * gpus * 6, rate=4.0 * gpus, output_mean=120.0 if k == 0
                                      else 24.0), seed=k)
        out += [dataclasses.replace(r, timestamp_ms=r.timestamp_ms + 6000 * k) for r in part.requests]
    return Trace("phased", tuple(out))


def test_online_planners_move_engines_to_prefill_when_the_load_turns_prefill_heavy(tmp_path):
    """On a decode-heavy then prefill-heavy load (from 6 s), both planners serve with more prefill engines
    than they started with, and only once the prefill-heavy phase began; the offline bound's goodput is at
    least theirs (within 1%: goodput divides by the span to the last token)."""
    model = _planted_profile(tmp_path)
    trace, study = _phased(4), Study(4, Slo(500, 50), interval_s=2.0, resplit=Resplit(drain_s=0.2, startup_s=1.0))
    sample = Trace("sample", trace.requests[: len(trace) // 2])
    outs = {name: Online(name, make, sample).run(trace, study) for name, make in
            (("adaptive", lambda st: LoadBalance(model, st.slo, st.interval_s)),
             ("dynamo", lambda st: DynamoSla(model, st.slo, st.interval_s)))}
    bound = Offline(model).run(trace, study)
    for name, o in outs.items():
        assert o.schedule is not None and o.schedule.moves > 0, name
        first, *later = o.schedule.timeline
        assert max(s.prefill for s in later) > first.prefill, (name, o.chosen)
        assert all(s.t_ns >= 6e9 for s in later if s.prefill > first.prefill), (name, o.chosen)
        assert o.summary.completed == len(trace)
        assert bound.summary.goodput_per_gpu >= o.summary.goodput_per_gpu * 0.99, name
    assert bound.chosen.endswith("(upper bound)") and bound.runs > 1


def test_cmd_cluster_report_compares_every_strategy_and_writes_json_and_a_plot(tmp_path, capsys):
    _planted_profile(tmp_path / "profile")
    out = tmp_path / "report"
    assert _cli("--gpus", "4", "--requests", "24", "--rate", "12", "--seeds", "2", "--search", "local",
                "--profile", str(tmp_path / "profile"), "--report", str(out)) == 0
    text = capsys.readouterr().out
    for name in ("baseline", "static", "adaptive", "dynamo", "offline"):
        assert f"  {name} " in text
    data = json.loads((out / "comparison.json").read_text())[0]
    assert data["gpus"] == 4 and set(data["strategies"]) == {"baseline", "static", "adaptive", "dynamo", "offline"}
    assert len(data["strategies"]["dynamo"]["runs"]) == 2 and (out / "cluster_strategies.png").stat().st_size > 0
    assert _cli("--strategy", "adaptive", "--gpus", "4", "--requests", "24", "--rate", "12", "--profile",
                str(tmp_path / "profile"), "-o", str(tmp_path / "runs.jsonl")) == 0
    assert json.loads((tmp_path / "runs.jsonl").read_text())["strategy"] == "adaptive"


def test_per_setup_reports_from_any_worker_merge_into_one(tmp_path):
    from pytest_ppd.cluster.compare import merge_reports

    assert merge_reports(tmp_path) is None
    for setup in ("large", "small"):  # as two xdist workers leave them
        (tmp_path / f"comparison-{setup}.json").write_text(json.dumps([{"setup": setup, "table": [f"{setup} table"]}]))
    report = merge_reports(tmp_path)
    assert report is not None and [e["setup"] for e in json.loads((tmp_path / "comparison.json").read_text())] \
        == ["small", "large"]
    text = report.read_text()
    assert text.index("small table") < text.index("large table") and "cluster_strategies-large.png" in text
