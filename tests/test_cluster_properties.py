"""Properties every cluster simulation keeps, whatever the deployment, router, rule or seed (hypothesis)."""

import asyncio
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ppd.client.virtual import VirtualDriver
from pytest_ppd.client.workload import Workload
from pytest_ppd.cluster import generate, parse_deployment, simulate, workload_spec
from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware, build
from pytest_ppd.cluster.runner import replay_run
from pytest_ppd.grid import GridPoint
from pytest_ppd.roofline import floor_s
from pytest_ppd.servers.topology import TopologyConfig
from pytest_ppd.servers.virtual import virtual_topology
from pytest_ppd.specs import gpu_spec, model_spec

DEPLOYMENTS = ["agg", "2P6D", "4P4D", "2P6D:vllm-ppd", "1P7D:dynamo-v0"]
cases = st.tuples(st.sampled_from(DEPLOYMENTS), st.sampled_from(["rr", "cache", "sticky"]),
                  st.sampled_from(["seed003", "multiturn", "chat"]), st.integers(0, 10_000),
                  st.sampled_from(["fair", "fifo"]))


def _run(case, requests=60, rate=None, count=False):
    deployment, policy, workload, seed, sharing = case
    spec = workload_spec(workload, requests=requests, **({"rate": rate} if rate else {}))
    split, _, rule = deployment.partition(":")
    spec_ = parse_deployment(split, 8, policy=policy, rule=rule or None)
    dep = build(spec_, Hardware(link_sharing=sharing))
    answered: list[str] = []
    if count:  # every answer, as the deployment gives it (a patch: the pure build only)
        original = dep._answered

        def counted(flight):
            answered.append(flight.handle.rid)
            original(flight)

        dep._answered = counted  # type: ignore[method-assign]
    return replay_run(dep, generate(spec, seed=seed), deployment, 8), answered


@pytest.mark.pure
@settings(max_examples=12, deadline=None)
@given(cases)
def test_every_request_is_answered_exactly_once_with_the_tokens_it_asked_for(case):
    run, answered = _run(case, count=True)
    sent = [r for r in run.results if r.error is None]
    assert sorted(answered) == sorted(set(answered)) and len(answered) == len(sent) == len(run.results)
    assert all(r.ok and r.first_ns <= r.last_ns for r in run.results)


@settings(max_examples=6, deadline=None)
@given(cases)
def test_the_same_seed_gives_the_same_run(case):
    a, b = _run(case)[0], _run(case)[0]
    assert a.results == b.results and (a.span_ns, a.kv_bytes, a.events) == (b.span_ns, b.kv_bytes, b.events)


@settings(max_examples=12, deadline=None)
@given(cases)
def test_no_request_beats_the_hardware_floor(case):
    """TTFT >= the roofline of computing its uncached tokens alone; each decode step streams the weights."""
    run, _ = _run(case)
    model, gpu = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")
    step_s = model.step_weight_bytes / gpu.hbm_bytes_per_s
    for r in run.results:
        assert r.ttft_ns >= floor_s(model, gpu, 1, r.cached_tokens, r.prompt_tokens - r.cached_tokens) * 1e9
        if r.itl_ns is not None:
            assert r.itl_ns >= step_s * 1e9


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), deployment=st.sampled_from(["agg", "2P6D", "4P4D"]))
def test_littles_law_holds_at_steady_state(seed, deployment):
    """Over the middle half of a long run at a steady load: time-average requests in the system = arrival
    rate x mean time in system (of the requests that arrived in the window), within 2%."""
    run = simulate(parse_deployment(deployment, 8), generate(workload_spec("seed003", requests=1500, rate=12.0),
                                                            seed=seed))
    spans = [(r.sent_ns, r.last_ns) for r in run.results]
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    t1, t2 = start + (end - start) // 4, start + 3 * (end - start) // 4
    in_system = sum(max(0, min(e, t2) - max(s, t1)) for s, e in spans) / (t2 - t1)
    arrived = [e - s for s, e in spans if t1 <= s < t2]
    little = len(arrived) / (t2 - t1) * statistics.fmean(arrived)
    assert in_system == pytest.approx(little, rel=0.02)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), deployment=st.sampled_from(["agg", "2P6D"]))
def test_ttft_does_not_fall_as_load_rises_under_fcfs(seed, deployment):
    """The same prompts at 2, 8 and 32 req/s on 8 GPUs: mean TTFT never falls as the load rises."""
    means = []
    for rate in (2.0, 8.0, 32.0):
        run = simulate(parse_deployment(deployment, 8), generate(workload_spec("seed003", requests=200, rate=rate),
                                                                seed=seed))
        means.append(statistics.fmean(r.ttft_ns for r in run.results))
    assert means == sorted(means)


@settings(max_examples=8, deadline=None)
@given(bs=st.sampled_from([1, 4, 16]), L=st.sampled_from([0, 1024, 4096]), m=st.sampled_from([1, 32, 512]))
def test_a_1p1d_cluster_fed_the_grids_rounds_gives_the_virtual_grids_latencies(bs, L, m):
    """The cluster's 1P1D deployment (its router, FIFO links) and the grid's virtual P/D topology are one
    simulator: the same warm-up and rounds give the same token times to the nanosecond."""
    point = GridPoint(bs, L, m)
    times = []
    for dep in (virtual_topology(TopologyConfig(backend="sim", kind="pd", model="Llama-3.1-8B"))[0],
                build(DeploymentSpec("pd", 2, 1), Hardware(link_sharing="fifo"))):
        driver, wl = VirtualDriver(dep), Workload(point, model_spec("Llama-3.1-8B").vocab_size)

        async def rounds(driver=driver, wl=wl):
            await driver.warm(wl, point)
            return [await driver.round(wl, point, k, 4) for k in range(3)]

        times.append([[(r.event_ns, r.meta_info["cached_tokens"]) for r in rnd] for rnd in asyncio.run(rounds())])
    assert times[0] == times[1]
