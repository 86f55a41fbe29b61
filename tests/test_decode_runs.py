"""Decode runs (sim/runs.py) change how many events the deployment processes, never what it computes:
with and without them, every token time, id, meta_info and meter is the same, whatever arrives or leaves
mid-run and whenever a client looks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ppd.sim.costmodel import CostModel, CostProfile
from pytest_ppd.sim.deployment import Deployment
from pytest_ppd.sim.nodes import NS
from pytest_ppd.sim.engine import Batch
from pytest_ppd.sim.runs import DecodeRun, _round_half_even
from pytest_ppd.roofline import attention_flops
from pytest_ppd.specs import gpu_spec, model_spec

BASE = ["--model-path", "Llama-3.1-8B", "--sim-gpu", "H100-SXM"]
P = BASE + ["--disaggregation-mode", "prefill"]
D = BASE + ["--disaggregation-mode", "decode"]
SMALL = BASE + ["--max-total-tokens", "6000", "--cuda-graph-max-bs", "2"]  # evictions, eager decode steps

# (at ms, prompt tokens, new tokens, shares the previous prompt's prefix, abort after ms or None)
requests = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 1500), st.integers(1, 120), st.booleans(),
                              st.one_of(st.none(), st.integers(0, 200))), min_size=1, max_size=12)


def _play(topology: str, plan, runs: bool, looks: list[int], times: bool = True):
    dep = {"colocated": lambda: Deployment.from_argvs(colocated=[SMALL]),
           "two": lambda: Deployment.from_argvs(colocated=[BASE, SMALL]),
           "pd": lambda: Deployment.from_argvs(prefill=[P], decode=[D]),
           "pd-fair": lambda: Deployment.from_argvs(prefill=[P, P], decode=[D + ["--sim-link-sharing", "fair"]])
           }[topology]()
    dep.decode_runs, dep.token_times = runs, times
    handles, seen, prev = [], [], [7]
    for k, (at, n, new, shared, abort_after) in enumerate(plan):
        ids = (prev[: n // 2] if shared else []) + [1000 + (k * 7919 + j * 31) % 90000 for j in range(n)]
        prev = ids
        h = dep.submit(ids, new, at_ns=max(at * 1_000_000, dep.now_ns))
        handles.append(h)
        if abort_after is not None:
            dep.call_at(h.sent_ns + abort_after * 1_000_000, lambda h=h: dep.abort(h) if not h.done else None)
    for look in sorted(looks):  # a client reading its streams mid-run (what interference measurement does)
        dep.run(max(look * 1_000_000, dep.now_ns))
        seen.append([(len(h.output_ids), tuple(h.token_ns)) for h in handles])
    dep.run()
    out = [(h.rid, tuple(h.token_ns), tuple(h.output_ids), h.done_ns, h.error, sorted(h.meta_info.items()))
           for h in handles]
    meters = [(n.steps, n.busy_ns, n.kv_tokens_in) for n in dep.nodes]
    return out, seen, meters, dep.events


@pytest.mark.parametrize("topology", ["colocated", "two", "pd", "pd-fair"])
@settings(max_examples=40, deadline=None)
@given(plan=requests, looks=st.lists(st.integers(0, 600), max_size=3))
def test_runs_give_what_single_steps_give(topology, plan, looks):
    stepped = _play(topology, plan, False, looks)
    ran = _play(topology, plan, True, looks)
    assert ran[:3] == stepped[:3]


def _ends(times: tuple) -> tuple:
    return times[:1] + times[1:][-1:]


@pytest.mark.parametrize("topology", ["colocated", "pd"])
@pytest.mark.parametrize("runs", [True, False])
@settings(max_examples=30, deadline=None)
@given(plan=requests, looks=st.lists(st.integers(0, 600), max_size=3))
def test_without_token_times_a_handle_keeps_its_first_and_last(topology, runs, plan, looks):
    """token_times=False (cluster replays) changes only token_ns: the first and the latest token's time, at
    every look; ids, meta_info, errors, meters the same."""
    every, ends = _play(topology, plan, runs, looks), _play(topology, plan, runs, looks, times=False)
    assert [(o[0], _ends(o[1]), *o[2:]) for o in every[0]] == ends[0]
    assert [[(n, _ends(t)) for n, t in look] for look in every[1]] == ends[1] and every[2] == ends[2]


def test_a_long_answer_is_a_few_events_not_one_per_token():
    dep = Deployment.from_argvs(colocated=[BASE])
    h = dep.submit(list(range(1000, 1500)), 400)
    dep.run()
    assert len(h.token_ns) == 400 and dep.events < 10


@settings(max_examples=50, deadline=None)
@given(contexts=st.lists(st.integers(1, 200_000), min_size=1, max_size=300), steps=st.integers(1, 80),
       model=st.sampled_from(["Llama-3.1-8B", "Llama-3.1-70B", "Qwen3-8B-FP8"]),
       gpu=st.sampled_from(["H100-SXM", "A100-80GB", "L40S"]), tp=st.sampled_from([1, 2, 4]),
       eager=st.booleans(), slowdown=st.sampled_from([1.0, 1.25]))
def test_decode_steps_are_decode_time_bit_for_bit(contexts, steps, model, gpu, tp, eager, slowdown):
    cost = CostModel(model_spec(model), gpu_spec(gpu), CostProfile(slowdown=slowdown), tp_size=tp)
    p, spec = cost.profile, cost.model

    def reference(ctx):  # the roofline summed request by request, as decode_time once computed it
        f_attn = sum(attention_flops(spec, 1, c) for c in ctx)
        b_kv = (sum(ctx) + len(ctx)) * spec.kv_bytes_per_token
        c0 = p.c0_decode_s + (p.eager_decode_s if eager else 0.0)
        return (c0 + cost._gpu_s(len(ctx), len(ctx), f_attn, b_kv, p.eta_w_decode)) * p.slowdown

    expected = [reference([c + j for c in contexts]) for j in range(steps)]
    assert cost.decode_steps(contexts, steps, eager) == expected
    assert [cost.decode_time([c + j for c in contexts], eager) for j in range(steps)] == expected


@settings(max_examples=60, deadline=None)
@given(durations=st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=1, max_size=80),
       now=st.integers(0, 10 ** 15))
def test_a_runs_step_ends_are_the_rounded_sums_of_its_steps(durations, now):
    """Long runs take their ends from arrays, short ones from a loop: both are this, to the nanosecond."""
    ends, expected = DecodeRun.start(Batch("decode", (), lambda: 0.0), durations, now).ends_ns, []
    for d in durations:
        now += max(int(round(d * NS)), 1)
        expected.append(now)
    assert ends == expected and all(type(e) is int for e in ends)


@settings(max_examples=200, deadline=None)
@given(x=st.one_of(st.floats(0.0, 2.0 ** 52, allow_nan=False, allow_infinity=False),
                   st.integers(0, 2 ** 40).map(lambda i: i + 0.5)))
def test_the_compiled_builds_rounding_is_pythons_round_half_to_even(x):
    """A compiled build sums a short run's steps with runs._round_half_even (round() is a generic call there)."""
    assert _round_half_even(x) == round(x)
