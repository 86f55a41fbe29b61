"""The physical floor matches DESIGN.md's arithmetic and the cost model never beats it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ppd.analysis.roofline import floor_ms
from pytest_ppd.sim.costmodel import CostModel, CostProfile, Extend
from pytest_ppd.specs import gpu_spec, model_spec


def test_seed000_points_are_below_the_floor():
    """Seed 000 reports 123 ms (BS=1) and 7.5 s (BS=64) for L=4096, m=8192: both impossible."""
    assert floor_ms("Llama-3.1-8B", "H100-SXM", 1, 4096, 8192) == pytest.approx(151, abs=2)
    assert floor_ms("Llama-3.1-8B", "H100-SXM", 64, 4096, 8192) > 9600
    assert 123 < floor_ms("Llama-3.1-8B", "H100-SXM", 1, 4096, 8192)


def test_small_appends_are_bandwidth_bound():
    """BS=1, m=1: reading 15 GB of block + lm_head weights dominates: about 4.5 ms at 3.35 TB/s."""
    assert floor_ms("Llama-3.1-8B", "H100-SXM", 1, 1024, 1) == pytest.approx(4.5, abs=0.1)


def test_floor_accepts_spec_objects():
    assert floor_ms(model_spec("Qwen3-8B"), gpu_spec("H200"), 2, 100, 10) == floor_ms("Qwen3-8B", "H200", 2, 100, 10)


@pytest.mark.parametrize("bad", [(0, 10, 10), (1, -1, 10), (1, 10, 0)])
def test_invalid_points_raise(bad):
    with pytest.raises(ValueError):
        floor_ms("Llama-3.1-8B", "H100-SXM", *bad)


@given(bs=st.integers(1, 64), L=st.integers(0, 32768), m=st.integers(1, 8192),
       gpu=st.sampled_from(["H100-SXM", "A100-80GB", "L40S", "B200"]),
       model=st.sampled_from(["Llama-3.1-8B", "Qwen2.5-7B", "Llama-3.1-70B"]))
def test_cost_model_step_never_below_floor(bs, L, m, gpu, model):
    """One extend batch of bs appends costs at least the physical floor, at any efficiency profile."""
    fast = CostProfile(name="fastest", c0_prefill_s=0.0, c0_decode_s=0.0, request_overhead_s=0.0,
                       eta_gemm=0.8, eta_w=0.9, eta_attn=0.8, eta_kv=0.9)
    cost = CostModel(model_spec(model), gpu_spec(gpu), fast)
    t = cost.extend_time([Extend(m, L)] * bs)
    assert t * 1e3 >= floor_ms(model, gpu, bs, L, m) * (1 - 1e-9)


def test_profile_rejects_efficiency_above_cap():
    with pytest.raises(ValueError, match="eta_gemm"):
        CostProfile(eta_gemm=0.95)


def test_profile_round_trips_through_json(tmp_path):
    p = CostProfile(name="mine", c0_prefill_s=0.01)
    p.save(tmp_path / "p.json")
    assert CostProfile.load(tmp_path / "p.json") == p
    (tmp_path / "bad.json").write_text('{"coefficients": {"c9": 1}}')
    with pytest.raises(ValueError, match="unexpected keys"):
        CostProfile.load(tmp_path / "bad.json")
