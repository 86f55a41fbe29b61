"""KV links into a decode engine: FIFO hand-offs queue, fairly shared ones split the bandwidth."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ppd.sim.__main__ import main as sim_main
from pytest_ppd.sim.deployment import Deployment
from pytest_ppd.sim.links import SharedLink

BASE = ["--model-path", "Llama-3.1-8B", "--sim-gpu", "H100-SXM"]
P = BASE + ["--disaggregation-mode", "prefill"]
D = BASE + ["--disaggregation-mode", "decode"]
BW, FIXED = 50e9, 10_000  # ib-ndr: 50 GB/s, 10 us


def _drain(link: SharedLink, starts: list[tuple[int, str, float]]) -> dict[str, int]:
    """Drive a link as the deployment does: transfers start at their times, wakes at next_ns()."""
    done: dict[str, int] = {}
    pending = sorted(starts)
    while pending or link.left:
        wake = link.next_ns()
        if pending and (wake is None or pending[0][0] <= wake):
            at, key, nbytes = pending.pop(0)
            link.start(at, key, nbytes)
        else:
            assert wake is not None
            for key in link.finished(wake):
                done[key] = wake + link.fixed_ns
    return done


def test_two_transfers_started_together_share_and_finish_together():
    done = _drain(SharedLink(BW, FIXED), [(0, "a", 1e9), (0, "b", 1e9)])
    assert done["a"] == done["b"] == pytest.approx(2e9 / BW * 1e9 + FIXED, abs=2)


def test_a_late_transfer_slows_the_first_down():
    """a (2 GB) alone for 20 ms moves 1 GB; then a and b (0.5 GB) share: b is through 20 ms later, a 10 ms after."""
    done = _drain(SharedLink(BW, 0), [(0, "a", 2e9), (20_000_000, "b", 0.5e9)])
    assert done["b"] == pytest.approx(40e6, abs=2) and done["a"] == pytest.approx(50e6, abs=2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50_000_000), st.floats(1e3, 5e9)), min_size=1, max_size=8))
def test_the_link_is_work_conserving_and_never_faster_than_its_bandwidth(transfers):
    """Whatever the pattern, the last byte arrives when a busy link would have carried them all: each
    transfer takes at least its bytes / bandwidth, and the link idles only when nothing is under way."""
    starts = [(at, f"t{i}", nbytes) for i, (at, nbytes) in enumerate(transfers)]
    done = _drain(SharedLink(BW, 0), starts)
    free = 0.0
    for at, _, nbytes in sorted(starts):
        free = max(free, at) + nbytes / BW * 1e9
    assert max(done.values()) == pytest.approx(free, abs=len(starts) + 1)
    assert all(done[key] >= at + nbytes / BW * 1e9 - 1 for at, key, nbytes in starts)


def test_fair_hand_offs_in_one_batch_arrive_together_fifo_ones_in_turn():
    """Three 2000-token prompts prefilled in one batch: FIFO hands them over one after another (5.25 ms of
    KV each on ib-ndr), fairly shared they all arrive when the last FIFO one would (less its queued latencies)."""
    ttft = {}
    for sharing in ("fifo", "fair"):
        dep = Deployment.from_argvs(prefill=[P], decode=[D + ["--sim-link-sharing", sharing]])
        reqs = [dep.submit([1000 + (k * 7919 + j * 31) % 90000 for j in range(2000)], 1) for k in range(3)]
        dep.run()
        ttft[sharing] = sorted(r.ttft_ns for r in reqs)
    kv_ns = 2000 * 131072 / BW * 1e9
    fifo, fair = ttft["fifo"], ttft["fair"]
    assert fifo[1] - fifo[0] == pytest.approx(kv_ns + FIXED, abs=2) and fifo[2] - fifo[1] == fifo[1] - fifo[0]
    assert fair[0] == fair[2] == pytest.approx(fifo[2] - 2 * FIXED, abs=3)


def test_the_served_sim_refuses_fair_sharing_with_the_fix(capsys):
    assert sim_main(D + ["--sim-link-sharing", "fair"]) == 2
    assert "virtual time only" in capsys.readouterr().err
