"""--sim-profile dynamo:DIR: the sim's step times interpolated from a measured (Dynamo-format) profile."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.profile import ProfileDesign, run_profile
from pytest_ppd.roofline import floor_s
from pytest_ppd.sim.costmodel import Extend
from pytest_ppd.sim.tablecost import TableCostModel
from pytest_ppd.specs import gpu_spec, model_spec

MODEL, GPU = "Llama-3.1-8B", "H100-SXM"
DESIGN = ProfileDesign(prefill_granularity=6, prefill_reps=1, decode_granularity=3, decode_osl=40,
                       decode_max_concurrency=64, cached_m=(32, 512, 2048), cached_L=(0, 1024, 4096), cached_reps=1)
TABLES = {"selected_prefill_interpolation": ("prefill_ttft",), "selected_decode_interpolation": ("z_itl",),
          "selected_cached_context": ("ttft_ms",)}


def _profile(out: Path, sim_flags=(), **kw):
    return run_profile(MODEL, GPU, 1, out, design=DESIGN, plots=False, command=["test"], context_length=16384,
                       sim_flags=sim_flags, **kw)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("measured")
    _profile(out)
    return out


def _errors(a: Path, b: Path, sub: str, key: str) -> np.ndarray:
    with np.load(a / sub / "raw_data.npz") as x, np.load(b / sub / "raw_data.npz") as y:
        r = np.abs(y[key] / x[key] - 1)
    return r[np.isfinite(r)]


def test_a_profile_round_trips_through_the_sim_within_3_percent(measured, tmp_path):
    """The sim driven by a profile, profiled again with the same design, gives that profile's own TTFT and
    ITL points back (the issue's bar: 3%)."""
    _profile(tmp_path, sim_flags=[f"--sim-profile=dynamo:{measured}"])
    for sub, (key,) in TABLES.items():
        errors = _errors(measured, tmp_path, sub, key)
        assert errors.size >= 6 and errors.max() < 0.03, (sub, errors.max())


def test_dynamos_own_files_without_the_cached_table_still_round_trip(measured, tmp_path):
    """A profile from Dynamo's profiler has no cached-context table: appends cost g(L+m) - g(L), and the
    prefill and decode points still come back."""
    source = tmp_path / "dynamo"
    shutil.copytree(measured, source)
    shutil.rmtree(source / "selected_cached_context")
    (source / "cached_context.json").unlink()
    again = tmp_path / "again"
    _profile(again, sim_flags=[f"--sim-profile=dynamo:{source}"])
    for sub in ("selected_prefill_interpolation", "selected_decode_interpolation"):
        assert _errors(measured, again, sub, TABLES[sub][0]).max() < 0.03
    cost = TableCostModel(model_spec(MODEL), gpu_spec(GPU), source)
    appends = [cost.extend_time([Extend(512, L)]) for L in (0, 1024, 4096, 8192)]
    assert appends == sorted(appends) and appends[-1] < cost.g(8192 + 512)


def test_the_json_fallbacks_are_read_when_the_npz_are_absent(measured, tmp_path):
    source = tmp_path / "json-only"
    source.mkdir()
    for name in ("prefill_raw_data.json", "decode_raw_data.json"):
        shutil.copy(measured / name, source / name)
    from_json = TableCostModel(model_spec(MODEL), gpu_spec(GPU), source)
    from_npz = TableCostModel(model_spec(MODEL), gpu_spec(GPU), measured)
    assert from_json.g(3000) == pytest.approx(TableCostModel(model_spec(MODEL), gpu_spec(GPU), measured).g(3000),
                                              rel=0.05)
    assert from_json.decode_time([2000] * 8) == pytest.approx(from_npz.decode_time([2000] * 8))


def test_a_table_faster_than_the_hardware_is_held_at_the_floor(measured, tmp_path):
    fast = tmp_path / "fast"
    shutil.copytree(measured, fast)
    path = fast / "selected_prefill_interpolation" / "raw_data.npz"
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    arrays["prefill_ttft"] = np.where(arrays["prefill_isl"] > 1000, arrays["prefill_ttft"] / 10, arrays["prefill_ttft"])
    np.savez(path, **arrays)
    cost = TableCostModel(model_spec(MODEL), gpu_spec(GPU), fast)
    assert cost.extend_time([Extend(8192, 0)]) >= floor_s(MODEL, GPU, 1, 0, 8192)


@pytest.mark.parametrize("mangle,match", [
    (lambda d: shutil.rmtree(d / "selected_prefill_interpolation") or (d / "prefill_raw_data.json").unlink(),
     "neither selected_prefill_interpolation/raw_data.npz nor prefill_raw_data.json"),
    (lambda d: np.savez(d / "selected_decode_interpolation" / "raw_data.npz", z_itl=np.ones(3)),
     r"lacks or mangles a key \(x_kv_usage is not a file in the archive\)"),
])
def test_a_broken_profile_is_one_clear_error(measured, tmp_path, mangle, match):
    broken = tmp_path / "broken"
    shutil.copytree(measured, broken)
    mangle(broken)
    with pytest.raises(ConfigError, match=match):
        TableCostModel(model_spec(MODEL), gpu_spec(GPU), broken)
