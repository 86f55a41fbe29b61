"""Replica counts from a profile: Dynamo's SLA-planner formulas next to the cache-aware count."""

import json
import math

import numpy as np
import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.profile.plan import Target, best_decode_thpt, plan


@pytest.fixture
def planted(tmp_path):
    """A profile with known numbers: prefill TTFT 10 + ISL/100 ms; decode ITL 5 + n/10 ms at every context,
    throughput n x 1000 / ITL; appends cost 10 + m/100 + L/2000 ms."""
    isl = np.array([100, 1000, 4000, 16000], dtype=np.int64)
    ttft = 10 + isl / 100
    (tmp_path / "selected_prefill_interpolation").mkdir()
    np.savez(tmp_path / "selected_prefill_interpolation" / "raw_data.npz", prefill_isl=isl,
             prefill_ttft=ttft.astype(float), prefill_thpt_per_gpu=isl / ttft * 1000)
    ctx, n = np.meshgrid([1000.0, 8000.0], [1.0, 8.0, 64.0])
    itl = 5 + n / 10
    (tmp_path / "selected_decode_interpolation").mkdir()
    np.savez(tmp_path / "selected_decode_interpolation" / "raw_data.npz", x_kv_usage=(n * ctx / 1e6).ravel(),
             y_context_length=ctx.ravel(), z_itl=itl.ravel(), z_thpt_per_gpu=(n * 1000 / itl).ravel(),
             max_kv_tokens=np.array([1_000_000], dtype=np.int64))
    m, L = np.array([32, 512, 4096], dtype=np.int64), np.array([0, 4096, 16000], dtype=np.int64)
    (tmp_path / "selected_cached_context").mkdir()
    np.savez(tmp_path / "selected_cached_context" / "raw_data.npz", cached_m=m, cached_L=L,
             ttft_ms=10 + m[None, :] / 100 + L[:, None] / 2000)
    (tmp_path / "profile_manifest.json").write_text(json.dumps({"model": "Llama-3.1-8B", "gpu": "H100-SXM", "tp": 1}))
    return tmp_path


def test_dynamos_prefill_and_decode_formulas(planted):
    t = Target(ttft_ms=500, itl_ms=10, rate=30, isl=4000, osl=200)
    p = plan(planted, t)
    assert p.ttft_dynamo_ms == pytest.approx(50)
    assert p.prefill_dynamo == math.ceil(30 * 4000 / (4000 / 50 * 1000))  # rate x ISL / thpt per GPU = 1.5 -> 2
    # ITL 5 + n/10 <= 10 up to n = 50; throughput there, linear between the measured n = 8 and 64 as
    # Dynamo's interpolator has it (the planted curve itself gives 5000)
    at8, at64 = 8 * 1000 / 5.8, 64 * 1000 / 11.4
    assert p.decode_thpt_per_gpu == pytest.approx(at8 + (50 - 8) / 56 * (at64 - at8), rel=0.01)
    assert p.decode == math.ceil(30 * 200 / p.decode_thpt_per_gpu)
    assert p.prefill_cache_aware == p.prefill_dynamo  # nothing cached: the same count


def test_the_cache_aware_count_charges_only_the_fresh_tokens(planted):
    t = Target(ttft_ms=500, itl_ms=10, rate=300, isl=4096 + 512, osl=200, cached=4096 / (4096 + 512))
    p = plan(planted, t)
    assert p.ttft_cached_ms == pytest.approx(10 + 512 / 100 + 4096 / 2000, rel=0.02)  # the table's own point
    assert p.prefill_cache_aware == math.ceil(300 * p.ttft_cached_ms / 1000)
    assert p.prefill_dynamo > 2 * p.prefill_cache_aware  # 17 vs 6


def test_an_unreachable_itl_falls_back_and_says_so(planted):
    assert best_decode_thpt(planted, 4.0, 1000) == 0
    p = plan(planted, Target(ttft_ms=5, itl_ms=4, rate=1, isl=4000, osl=10))
    assert p.decode == 1 and any("no measured decode point" in n for n in p.notes)
    assert any("> the TTFT SLA" in n for n in p.notes)


@pytest.mark.parametrize("text", ["ttft=3", "ttft=1,itl=1,rate=1,isl=1,osl=1,cached=1", "ttft=x,itl=1",
                                  "ttft=1,itl=1,rate=1,isl=1,osl=1,bogus=2"])
def test_a_bad_plan_spec_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="e.g. ttft=200|cached in"):
        Target.parse(text)
