"""`ppd microbench`: efficiencies from timed ops, caps a calibration can trust, one line where there is no GPU."""

import argparse
import json
import sys
import types

import pytest

from pytest_ppd import microbench as mb
from pytest_ppd.errors import ConfigError
from pytest_ppd.roofline import attention_flops
from pytest_ppd.specs import ModelSpec, gpu_spec, model_spec

TINY = ModelSpec(name="tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=96, vocab_size=256, context_length=1024)
TINY_GRID = mb.Grid(tokens=(1, 8), attention=((1, 32), (8, 32)), copy_bytes=1 << 16, launches=10)
TORCH_REASON = "the measuring path needs torch (a CPU build will do); the CLI's no-torch path is tested without it"
GOOD = {"kind": "ppd-microbench", "version": 1, "gpu": "H100-SXM", "device": "cuda",
        "caps": {"eta_gemm": 0.78, "eta_w": 0.86, "eta_attn": 0.61, "eta_kv": 0.83}}


def _args(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    mb.add_arguments(parser)
    return parser.parse_args(["-o", str(tmp_path / "mb.json"), *argv])


def _fake_torch(monkeypatch, *, available, cuda_version="12.8"):
    torch = types.ModuleType("torch")
    torch.__version__ = "2.9.1"
    torch.version = types.SimpleNamespace(cuda=cuda_version)
    torch.cuda = types.SimpleNamespace(is_available=lambda: available)
    monkeypatch.setitem(sys.modules, "torch", torch)


def _write(tmp_path, doc):
    path = tmp_path / "microbench.json"
    path.write_text(json.dumps(doc))
    return path


# --- no torch, no GPU: one line, exit 2 ------------------------------------------------------------------------

@pytest.mark.parametrize("setup,reason", [
    (lambda mp: mp.setitem(sys.modules, "torch", None), "torch is not installed"),
    (lambda mp: _fake_torch(mp, available=False), "torch 2.9.1 (CUDA 12.8) sees no GPU"),
    (lambda mp: _fake_torch(mp, available=False, cuda_version=None), "a CPU-only build"),
])
def test_without_torch_or_a_gpu_the_command_says_so_in_one_line_and_exits_2(setup, reason, tmp_path, monkeypatch,
                                                                              capsys):
    setup(monkeypatch)
    monkeypatch.setattr(mb, "run", lambda *a, **k: pytest.fail("measured without a GPU"))
    assert mb.cmd_microbench(_args(tmp_path)) == mb.EXIT_NO_GPU
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppd microbench needs a CUDA GPU and torch (pip install torch)")
    assert reason in err
    assert not (tmp_path / "mb.json").exists()


def test_with_a_gpu_the_command_writes_the_json_and_prints_the_caps(tmp_path, monkeypatch, capsys):
    _fake_torch(monkeypatch, available=True)
    monkeypatch.setattr(mb, "run", lambda model, gpu, **kw: {**GOOD, "device_name": "NVIDIA H100 80GB HBM3",
                                                             "launch_s": 4.2e-6, "warnings": ["clocks low"], **kw})
    assert mb.cmd_microbench(_args(tmp_path, "--reps", "7")) == 0
    out, err = capsys.readouterr()
    assert "eta_gemm 0.78" in out and "launch 4.2 us" in out and "warning: clocks low" in err
    written = json.loads((tmp_path / "mb.json").read_text())
    assert written["reps"] == 7 and written["quick"] is False
    assert mb.load_caps(tmp_path / "mb.json") == GOOD["caps"]


def test_an_output_in_a_missing_directory_is_refused_before_measuring(tmp_path, monkeypatch):
    _fake_torch(monkeypatch, available=True)
    monkeypatch.setattr(mb, "run", lambda *a, **k: pytest.fail("measured before checking -o"))
    args = _args(tmp_path)
    args.output = str(tmp_path / "nowhere" / "mb.json")
    with pytest.raises(ConfigError, match="no directory"):
        mb.cmd_microbench(args)


def test_the_default_output_is_named_after_the_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_torch(monkeypatch, available=True)
    monkeypatch.setattr(mb, "run", lambda *a, **k: {**GOOD, "device_name": "x", "launch_s": 1e-6, "warnings": []})
    args = _args(tmp_path, "--gpu", "h200")
    args.output = None
    assert mb.cmd_microbench(args) == 0
    assert (tmp_path / "microbench-H200.json").is_file()


# --- load_caps ---------------------------------------------------------------------------------------------------

def test_load_caps_returns_the_four_ceilings(tmp_path):
    assert mb.load_caps(_write(tmp_path, GOOD), gpu="H100") == GOOD["caps"]


@pytest.mark.parametrize("change,message", [
    ({"kind": "ppd-records"}, "is not a ppd-microbench version 1 file"),
    ({"version": 2}, "is not a ppd-microbench version 1 file"),
    ({"device": "cpu"}, "measured on 'cpu', not a GPU"),
    ({"caps": {**GOOD["caps"], "eta_attn": 1.2}}, r"eta_attn=1.2 must be a number in \(0, 1\]"),
    ({"caps": {**GOOD["caps"], "eta_w": 0}}, r"eta_w=0 must be a number in \(0, 1\]"),
    ({"caps": {**GOOD["caps"], "eta_w": True}}, r"eta_w=True must be a number"),
    ({"caps": {k: v for k, v in GOOD["caps"].items() if k != "eta_kv"}}, "caps lack eta_kv"),
    ({"caps": None}, "caps lack eta_gemm, eta_w, eta_attn, eta_kv"),
])
def test_load_caps_refuses_a_file_it_cannot_trust_in_one_line_naming_the_fix(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as info:
        mb.load_caps(_write(tmp_path, {**GOOD, **change}))
    assert "\n" not in str(info.value) and "run `ppd microbench -o" in str(info.value)


def test_load_caps_refuses_a_missing_or_broken_file_and_another_gpus(tmp_path):
    with pytest.raises(ConfigError, match="cannot read microbench file"):
        mb.load_caps(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read microbench file"):
        mb.load_caps(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="measured H100-SXM, not H200"):
        mb.load_caps(_write(tmp_path, GOOD), gpu="H200")


# --- the arithmetic ------------------------------------------------------------------------------------------------

def test_efficiency_is_work_over_time_over_peak():
    """4e11 FLOPs and 1e9 bytes in 1 ms on a 1e15 FLOP/s, 2e12 B/s part: 0.4 of compute, 0.5 of bandwidth."""
    m = mb.measurement("gemm_bf16", {"layer": "o"}, 1.0, 4e11, 1e9, 1e15, 2e12)
    assert m["achieved_flops"] == pytest.approx(4e14) and m["achieved_bytes_per_s"] == pytest.approx(1e12)
    assert m["flop_efficiency"] == pytest.approx(0.4) and m["byte_efficiency"] == pytest.approx(0.5)
    assert m["efficiency"] == pytest.approx(0.5) and m["layer"] == "o"


def test_caps_are_the_best_of_each_class_never_above_one_and_skips_do_not_count():
    found = [mb.measurement("gemm_bf16", {}, 1.0, 4e11, 1e8, 1e15, 2e12),
             mb.measurement("gemm_bf16", {}, 1.0, 1e10, 1.6e9, 1e15, 2e12),
             mb.measurement("attention", {}, 1.0, 2e12, 1e9, 1e15, 2e12),  # 2.0 of peak: an L2 hit, say
             {"op": "attention", "skipped": "flashinfer failed"}]
    assert mb.caps_from(found) == pytest.approx({"eta_gemm": 0.4, "eta_w": 0.8, "eta_attn": 1.0, "eta_kv": 0.5})
    assert mb.caps_from(found, ceiling=float("inf"))["eta_attn"] == pytest.approx(2.0)
    assert mb.caps_from([{"op": "gemm_bf16", "skipped": "refused"}]) == {}


def test_a_zero_time_is_refused():
    with pytest.raises(Exception, match="cannot be right"):
        mb.measurement("copy", {}, 0.0, 0.0, 1e9, 1e15, 2e12)


def test_gemm_shapes_are_the_models_linear_layers():
    assert mb.gemm_shapes(model_spec("Llama-3.1-8B")) == {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
        "lm_head": (128256, 4096)}


# --- the measuring path, on a CPU torch -----------------------------------------------------------------------

def test_a_cpu_run_writes_the_whole_structure_and_its_caps_are_refused(tmp_path):
    pytest.importorskip("torch", reason=TORCH_REASON)
    doc = mb.run(TINY, "H100-SXM", device="cpu", reps=2, grid=TINY_GRID)
    assert {"kind", "version", "gpu", "device_name", "model", "torch", "cuda", "clocks", "measurements", "caps",
            "launch_s", "date"} <= set(doc)
    assert (doc["kind"], doc["version"], doc["device"], doc["gpu"], doc["model"]) == (
        "ppd-microbench", 1, "cpu", "H100-SXM", "tiny")
    ops = [(m["op"], m.get("layer"), m.get("tokens"), m.get("m"), m.get("L")) for m in doc["measurements"]]
    assert [o for o in ops if o[0] == "gemm_bf16"] == [("gemm_bf16", layer, t, None, None) for layer in
                                                       ("qkv", "o", "gate_up", "down", "lm_head") for t in (1, 8)]
    assert [o[3:] for o in ops if o[0] == "attention"] == [(1, 32), (8, 32)]
    assert ("copy", None, None, None, None) in ops
    assert any(m["op"] == "gemm_fp8" and "8.9+" in m["skipped"] for m in doc["measurements"])
    assert set(doc["caps"]) == {"eta_gemm", "eta_w", "eta_attn", "eta_kv"}
    assert all(0 < v <= 1 for v in doc["caps"].values()) and 0 < doc["launch_s"] < 0.01
    assert any("mean nothing" in w for w in doc["warnings"])
    path = _write(tmp_path, doc)  # must be plain JSON
    with pytest.raises(ConfigError, match="measured on 'cpu', not a GPU"):
        mb.load_caps(path)


def test_planted_timings_give_the_cost_models_efficiencies(monkeypatch):
    """Every op takes 2 ms: each efficiency is its work (as the cost model counts it) / 2 ms / the GPU's peak."""
    pytest.importorskip("torch", reason=TORCH_REASON)
    monkeypatch.setattr(mb, "_time_ms", lambda bench, fn: 2.0)
    gpu = gpu_spec("H100-SXM")
    doc = mb.run(TINY, gpu, device="cpu", reps=2, grid=TINY_GRID)
    found = {(m["op"], m.get("layer"), m.get("tokens"), m.get("m")): m for m in doc["measurements"]
             if "skipped" not in m}
    down = found[("gemm_bf16", "down", 8, None)]
    assert down["flop_efficiency"] == pytest.approx(2 * 8 * 64 * 96 / 2e-3 / gpu.peak_flops)
    assert down["byte_efficiency"] == pytest.approx(64 * 96 * 2 / 2e-3 / gpu.hbm_bytes_per_s)
    attn = found[("attention", None, None, 8)]
    assert attn["flop_efficiency"] == pytest.approx(attention_flops(TINY, 8, 32) / 2 / 2e-3 / gpu.peak_flops)
    assert attn["byte_efficiency"] == pytest.approx(40 * TINY.kv_bytes_per_token / 2 / 2e-3 / gpu.hbm_bytes_per_s)
    copy = found[("copy", None, None, None)]
    assert copy["byte_efficiency"] == pytest.approx(2 * (1 << 16) / 2e-3 / gpu.hbm_bytes_per_s)
    assert doc["caps"]["eta_gemm"] == pytest.approx(2 * 8 * 256 * 64 / 2e-3 / gpu.peak_flops)  # lm_head, 8 tokens
    assert doc["caps"]["eta_w"] == pytest.approx(256 * 64 * 2 / 2e-3 / gpu.hbm_bytes_per_s)
    assert doc["caps"]["eta_kv"] == attn["byte_efficiency"]


def test_a_planted_time_faster_than_the_hardware_is_capped_at_one_and_said(monkeypatch):
    pytest.importorskip("torch", reason=TORCH_REASON)
    monkeypatch.setattr(mb, "_time_ms", lambda bench, fn: 1e-12)
    doc = mb.run(TINY, "H100-SXM", device="cpu", reps=2, grid=TINY_GRID)
    assert doc["caps"] == {"eta_gemm": 1.0, "eta_w": 1.0, "eta_attn": 1.0, "eta_kv": 1.0}
    assert any("capped at 1" in w for w in doc["warnings"])


def test_reps_below_one_are_refused():
    pytest.importorskip("torch", reason=TORCH_REASON)
    with pytest.raises(ConfigError, match="--reps 0"):
        mb.run(TINY, "H100-SXM", device="cpu", reps=0, grid=TINY_GRID)
