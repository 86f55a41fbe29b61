"""ppd profile: Dynamo's files exactly, the physics right, every request proven, deterministic, resumable."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.profile import ProfileDesign, add_arguments, cmd_profile, read_decode, read_prefill, run_profile
from pytest_ppd.profile import formats, measure, sweeps
from pytest_ppd.profile.measure import PointRecord
from pytest_ppd.servers.topology import TopologyConfig
from pytest_ppd.profile.engines import VirtualEngine
from pytest_ppd.servers.virtual import virtual_topology

MODEL, GPU, CTX = "Llama-3.1-8B", "H100-SXM", 8192
SMALL = ProfileDesign(prefill_granularity=4, prefill_reps=2, decode_granularity=3, decode_osl=20,
                      decode_max_concurrency=24, cached_m=(32, 512), cached_L=(0, 1024, 4096, 8192), cached_reps=2)


def _run(out: Path, design: ProfileDesign = SMALL, gpu: str = GPU, **kw):
    kw.setdefault("context_length", CTX)
    return run_profile(MODEL, gpu, 1, out, design=design, plots=False, command=["test"], **kw)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("profile"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def test_prefill_npz_has_dynamos_keys_dtypes_and_shapes(profile):
    """raw_data.npz: exactly prefill_isl int64, prefill_ttft and prefill_thpt_per_gpu float64, one per ISL."""
    d = _npz(profile.out_dir / "selected_prefill_interpolation" / "raw_data.npz")
    assert set(d) == {"prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu"}
    n = len(sweeps.prefill_isls(profile.engine.max_context_length, SMALL.prefill_granularity))
    assert [d[k].dtype for k in ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")] == [np.int64, np.float64,
                                                                                             np.float64]
    assert all(v.shape == (n,) for v in d.values()) and n >= 4 and d["prefill_isl"][0] == 100
    np.testing.assert_allclose(d["prefill_thpt_per_gpu"], d["prefill_isl"] / d["prefill_ttft"] * 1000 / 1)


def test_decode_npz_has_dynamos_keys_dtypes_and_shapes(profile):
    """x_kv_usage, y_context_length, z_itl, z_thpt_per_gpu float64 (P,), max_kv_tokens int64 (1,) = the pool."""
    d = _npz(profile.out_dir / "selected_decode_interpolation" / "raw_data.npz")
    assert set(d) == {"x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu", "max_kv_tokens"}
    p = len(sweeps.decode_points(profile.engine.max_context_length, profile.engine.max_kv_tokens, SMALL.decode_osl,
                                 SMALL.decode_granularity, SMALL.decode_max_concurrency))
    for key in ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu"):
        assert d[key].dtype == np.float64 and d[key].shape == (p,), key
    assert (d["max_kv_tokens"].dtype, d["max_kv_tokens"].shape) == (np.int64, (1,))
    assert d["max_kv_tokens"][0] == profile.engine.max_kv_tokens > 100_000
    mean_ctx = np.asarray(profile.decode.isl) + SMALL.decode_osl / 2  # Dynamo's isl + osl / 2
    np.testing.assert_allclose(d["y_context_length"], mean_ctx)
    np.testing.assert_allclose(d["x_kv_usage"], mean_ctx * profile.decode.concurrency / profile.engine.max_kv_tokens)


def test_json_fallbacks_hold_the_same_data_and_load_without_the_npz(profile, tmp_path):
    """prefill_raw_data.json / decode_raw_data.json at the top level, max_kv_tokens a plain int there."""
    pre = json.loads((profile.out_dir / "prefill_raw_data.json").read_text())
    dec = json.loads((profile.out_dir / "decode_raw_data.json").read_text())
    assert set(pre) == {"prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu"}
    assert set(dec) == {"x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu", "max_kv_tokens"}
    assert type(dec["max_kv_tokens"]) is int and all(type(v) is int for v in pre["prefill_isl"])
    for name in ("prefill_raw_data.json", "decode_raw_data.json"):
        (tmp_path / name).write_text((profile.out_dir / name).read_text())
    assert read_prefill(tmp_path) == read_prefill(profile.out_dir) == profile.prefill
    assert read_decode(tmp_path) == read_decode(profile.out_dir) and read_decode(tmp_path).z_itl == profile.decode.z_itl
    with pytest.raises(ConfigError, match="no prefill profile"):
        read_prefill(tmp_path / "nowhere")


def test_mocker_table_is_float64_with_a_kv_by_context_itl_grid(profile):
    d = _npz(profile.out_dir / "perf_data.npz")
    assert set(d) == {"prefill_isl", "prefill_ttft_ms", "decode_active_kv_tokens", "decode_context_length",
                      "decode_itl"}
    assert all(v.dtype == np.float64 for v in d.values())
    kv, ctx = d["decode_active_kv_tokens"], d["decode_context_length"]
    assert d["decode_itl"].shape == (len(kv), len(ctx)) == (formats.MOCKER_RESOLUTION, len(set(profile.decode.isl)))
    for axis in (d["prefill_isl"], kv, ctx):
        assert np.all(np.diff(axis) > 0)  # the Mocker's interpolators need strictly increasing axes
    np.testing.assert_array_equal(d["prefill_ttft_ms"], profile.prefill.ttft_ms)
    # at the measured (batch, context) points the table gives back the measured ITL
    first = [i for i, c in enumerate(profile.decode.y_context_length) if c == ctx[0]]
    one = min(first, key=lambda i: profile.decode.concurrency[i])
    assert d["decode_itl"][0, 0] == pytest.approx(profile.decode.z_itl[one])


def test_cached_table_schema_and_clipping(profile):
    """Our table: cached_m int64 (M,), cached_L int64 (J,), ttft_ms float64 (J, M); clipped points are NaN."""
    d = _npz(profile.out_dir / "selected_cached_context" / "raw_data.npz")
    assert set(d) == {"cached_m", "cached_L", "ttft_ms"}
    assert d["cached_m"].dtype == d["cached_L"].dtype == np.int64 and d["ttft_ms"].dtype == np.float64
    assert d["ttft_ms"].shape == (len(SMALL.cached_L), len(SMALL.cached_m))
    doc = json.loads((profile.out_dir / "cached_context.json").read_text())
    assert doc["schema"] == formats.CACHED_SCHEMA and doc["L"] == list(SMALL.cached_L)
    assert np.isnan(d["ttft_ms"][-1]).all() and doc["ttft_ms"][-1] == [None, None]  # L=8192 cannot fit
    assert not np.isnan(d["ttft_ms"][:-1]).any()
    assert any("clipped" in n for n in profile.notes)
    assert formats.read_cached(profile.out_dir).ttft_ms[1] == profile.cached.ttft_ms[1]


def test_grids_are_dynamos():
    """Dynamo 1.6.1's ranges: prefill from 100 to ctx - 512, decode to ctx - OSL, concurrency up to the pool."""
    assert sweeps.prefill_isls(16384, 16) == list(range(100, 15872, 985))
    # the decode ISLs behind the wheel's own H200 profile (y_context_length 350, 2997, ... = isl + 250)
    assert sweeps.decode_isls(16384, 500, 6) == [100, 2747, 5394, 8041, 10688, 13335]
    assert sweeps.num_request_range(698, 6) == [1, 140, 279, 419, 558, 698]
    assert sweeps.num_request_range(3, 6) == [1, 2, 3]
    assert sweeps.num_request_range(10_000, 6)[-1] == 2000
    assert sweeps.decode_points(1000, 100, 500, 6) == []  # not one request fits: the sweep stops
    assert sweeps.cached_points((32, 512), (0, 8192), limit=8192) == [(32, 0), (512, 0)]
    assert sweeps.x_kv_usage(100, 500, 1, 945029) == pytest.approx(3.70359005e-04)


def test_ttft_grows_with_isl_and_itl_with_concurrency_and_context(profile):
    assert all(b > a for a, b in zip(profile.prefill.ttft_ms, profile.prefill.ttft_ms[1:]))
    t = profile.decode
    by_ctx: dict[float, list[tuple[int, float]]] = {}
    for y, n, itl in zip(t.y_context_length, t.concurrency, t.z_itl):
        by_ctx.setdefault(y, []).append((n, itl))
    for rows in by_ctx.values():
        itls = [itl for _, itl in sorted(rows)]
        assert all(b > a for a, b in zip(itls, itls[1:]))
    singles = [dict(rows)[1] for _, rows in sorted(by_ctx.items())]
    assert len(singles) >= 3 and all(b > a for a, b in zip(singles, singles[1:]))


def test_cached_context_costs_more_with_L_but_far_less_than_a_cold_prefill(profile):
    """At fixed m, TTFT grows with the cached L, yet stays well under a cold prefill of L + m."""
    for m in SMALL.cached_m:
        ttfts = [profile.cached.at(m, L) for L in (0, 1024, 4096)]
        assert ttfts[0] < ttfts[1] < ttfts[2], (m, ttfts)
    engine = VirtualEngine(lambda: virtual_topology(TopologyConfig(kind="colocated", model=MODEL, gpu=GPU,
                                                                   context_length=CTX)))
    cold = engine.send([measure.PromptIds(128256, 7).fresh(4096 + 512)], 1)[0]
    assert cold.meta_info["cached_tokens"] == 0 and profile.cached.at(512, 4096) < 0.5 * cold.ttft_ns / 1e6


def test_every_counted_request_is_proven(profile):
    store = measure.ProfileStore(profile.out_dir, profile.design_hash)
    assert store.records and not profile.invalid
    for rec in store.records.values():
        assert all(rec.valid) and rec.cached_tokens == [rec.expected_cached] * len(rec.cached_tokens)
        want = {"prefill": 0, "decode": rec.isl - 1, "cached": rec.L}[rec.sweep]
        assert rec.expected_cached == want, rec.key


def test_a_flushed_cache_is_reported_not_recorded(tmp_path, monkeypatch):
    """Plant a flush between warm-up and measurement: every point that needed the cache fails its proof."""
    real = measure.warm

    def warm_then_flush(engine, prompts):
        real(engine, prompts)
        engine.flush()

    monkeypatch.setattr(measure, "warm", warm_then_flush)
    design = replace(SMALL, cached_L=(0, 1024))
    result = _run(tmp_path, design)
    assert any("cached_tokens 0 != 1024" in line for line in result.invalid)
    assert any(line.startswith("decode ") and "cached_tokens 0 != " in line for line in result.invalid)
    assert result.decode.z_itl == () and any("perf_data.npz" in n for n in result.notes)  # nothing unproven counts
    lines = (tmp_path / measure.RECORDS_FILE).read_text().splitlines()
    recs = {r.key: r for r in (PointRecord.from_json(json.loads(line)) for line in lines)}
    # the first append re-caches the context, so the second is proven and alone makes the median
    first = recs["m=32,L=1024"]
    assert first.valid == [False, True] and first.cached_tokens == [0, 1024]
    assert result.cached.at(32, 1024) == first.ttft_ms[1]
    assert all(r.valid == [True, True] for k, r in recs.items() if k.endswith("L=0"))
    assert all(not any(r.valid) and r.invalid_reasons for r in recs.values() if r.sweep == "decode")
    assert result.manifest["points"]["invalid"] == len(result.invalid)


def test_a_reused_prompt_in_the_prefill_sweep_is_caught(tmp_path, monkeypatch):
    """Repeat one prompt per ISL: the second repetition hits the cache, is named, and the median skips it."""
    monkeypatch.setattr(measure.PromptIds, "fresh", lambda self, n: [1000 + n % 5000] + [2000] * (n - 1))
    result = _run(tmp_path, replace(SMALL, sweeps=("prefill",)))
    assert result.invalid and all("request 1: cached_tokens" in line and "!= 0" in line for line in result.invalid)
    assert len(result.prefill.isl) == len(sweeps.prefill_isls(result.engine.max_context_length, 4))


def test_two_runs_write_identical_arrays(profile, tmp_path):
    _run(tmp_path)
    for rel in (formats.PREFILL_NPZ, formats.DECODE_NPZ, formats.MOCKER_NPZ, formats.CACHED_NPZ):
        a, b = _npz(profile.out_dir / rel), _npz(tmp_path / rel)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a), rel


def test_a_rerun_resumes_and_a_new_design_starts_over(tmp_path):
    assert (first := _run(tmp_path, replace(SMALL, sweeps=("prefill", "cached")))).measured > 0 and not first.reused
    lines = (tmp_path / "profile_records.jsonl").read_text().splitlines()
    (tmp_path / "profile_records.jsonl").write_text("\n".join(lines[:-2]) + "\n{\"torn")
    resumed = _run(tmp_path, replace(SMALL, sweeps=("prefill", "cached")))
    assert (resumed.measured, resumed.reused) == (2, first.measured - 2)
    assert resumed.prefill == first.prefill and resumed.cached.ttft_ms[:2] == first.cached.ttft_ms[:2]
    other = _run(tmp_path, replace(SMALL, sweeps=("prefill",), prefill_reps=3))
    assert other.reused == 0 and other.measured == len(other.prefill.isl)


def test_tp_divides_throughput_per_gpu(tmp_path):
    result = run_profile(MODEL, GPU, 2, tmp_path, design=replace(SMALL, sweeps=("prefill",)), context_length=CTX)
    np.testing.assert_allclose(result.prefill.thpt_per_gpu, np.divide(result.prefill.isl, result.prefill.ttft_ms) * 500)
    assert result.manifest["num_gpus"] == 2 and "--tp-size" in result.engine.argv


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "external"}, "--backend external needs --url of one SGLang engine"),
    ({"url": "http://127.0.0.1:1"}, "--url is for --backend external"),
    ({"backend": "vllm"}, "'vllm' is not a profile backend; valid: virtual, sim, sglang, external"),
    ({"design": replace(SMALL, prefill_reps=0)}, "--prefill-reps must be >= 1"),
    ({"design": replace(SMALL, sweeps=("prefil",))}, "--sweeps: prefil; valid"),
    ({"context_length": 600}, "raise --context-length above 612"),
    ({"gpu": "H999"}, "H999"),
    ({"file": True}, "is a file; give a directory"),
])
def test_bad_input_is_one_config_error_naming_the_fix(tmp_path, kwargs, match):
    if kwargs.pop("file", False):
        (tmp_path / "f").write_text("")
        tmp_path = tmp_path / "f"
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, **kwargs)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ppd profile")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_writes_plots_and_exits_0(tmp_path, capsys):
    args = _parse(["--model", MODEL, "--gpu", GPU, "--tp", "1", "-o", str(tmp_path), "--context-length", str(CTX),
                   "--prefill-granularity", "3", "--prefill-reps", "1", "--decode-granularity", "2",
                   "--decode-osl", "8", "--decode-max-concurrency", "4", "--cached-m", "32,512",
                   "--cached-L", "0,1024", "--cached-reps", "1", "--quiet"])
    assert cmd_profile(args) == 0
    assert "files in" in (out := capsys.readouterr().out) and "UNPROVEN" not in out
    assert all((tmp_path / png).stat().st_size > 1000 for png in ("prefill_ttft.png", "decode_itl.png",
                                                                     "cached_context_ttft.png"))
    manifest = json.loads((tmp_path / "profile_manifest.json").read_text())
    assert set(manifest["files"]) >= {"selected_prefill_interpolation/raw_data.npz", "perf_data.npz",
                                      "cached_context.json", "prefill_ttft.png"}
    assert manifest["design"]["cached_L"] == [0, 1024] and manifest["engine"]["max_kv_tokens"] > 0


def test_the_command_refuses_other_backends_and_bad_lists(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs --url"):
        cmd_profile(_parse(["--backend", "external", "-o", str(tmp_path)]))
    with pytest.raises(SystemExit):
        _parse(["-o", str(tmp_path), "--cached-m", "0,32"])
    assert "--cached-m '0,32': every value must be > 0" in capsys.readouterr().err


DYNAMO_REASON = ("ai-dynamo 1.6.1 is not installed; `pip install --no-deps ai-dynamo==1.6.1 && pip install msgspec "
                 "pydantic scikit-learn` to read the profile with Dynamo's planner and Mocker loaders")


@pytest.fixture
def dynamo(monkeypatch):
    """Dynamo's loaders without its Kubernetes and aisimulate imports: empty parent packages with __path__."""
    for module in ("dynamo.mocker", "sklearn", "msgspec"):
        pytest.importorskip(module, reason=DYNAMO_REASON)
    root = Path(importlib.util.find_spec("dynamo").submodule_search_locations[0])
    before = set(sys.modules)
    for name in ("dynamo.planner", "dynamo.planner.core", "dynamo.planner.core.perf_model"):
        stub = types.ModuleType(name)
        stub.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        monkeypatch.setitem(sys.modules, name, stub)
    pm = sys.modules["dynamo.planner.core.perf_model"]
    for sub, cls in (("prefill", "PrefillRegressionModel"), ("decode", "DecodeRegressionModel")):
        setattr(pm, cls, getattr(importlib.import_module(f"dynamo.planner.core.perf_model.{sub}"), cls))
    yield (importlib.import_module("dynamo.planner.monitoring.perf_metrics"),
           importlib.import_module("dynamo.mocker.utils.planner_profiler_perf_data_converter"))
    for name in set(sys.modules) - before:
        if name.startswith("dynamo."):  # numpy/scipy C extensions must stay loaded (see conftest.py)
            del sys.modules[name]


def test_dynamos_loaders_read_the_profile(profile, dynamo, tmp_path):
    perf_metrics, converter = dynamo
    d = str(profile.out_dir)
    prefill = perf_metrics._convert_prefill_profiling(d)
    assert [f.scheduled_requests.sum_prefill_tokens for f in prefill] == list(profile.prefill.isl)
    np.testing.assert_allclose([f.wall_time * 1000 for f in prefill], profile.prefill.ttft_ms)
    decode = perf_metrics._convert_decode_profiling(d)
    assert [f.scheduled_requests.num_decode_requests for f in decode] == list(profile.decode.concurrency)
    assert converter.is_profile_results_dir(profile.out_dir) and converter.is_mocker_format_npz(
        profile.out_dir / "perf_data.npz")
    theirs = _npz(converter.convert_profile_results_to_npz(d, tmp_path / "perf_data.npz"))
    ours = _npz(profile.out_dir / "perf_data.npz")
    assert theirs.keys() == ours.keys() and all(theirs[k].dtype == ours[k].dtype == np.float64 for k in ours)
    assert all(theirs[k].ndim == ours[k].ndim for k in ours)
