"""``ppd microbench``: what this GPU's kernels reach, as the cost model's efficiency ceilings.

bf16/FP8 GEMMs at the model's shapes, attention (m new queries over L cached keys), HBM copy: CUDA events, L2 flushed,
median of N reps; efficiency = (work / time) / the GPU table's peak FLOP/s or HBM bytes/s. A cap (what
``ppd calibrate --caps FILE`` reads) is the best efficiency of its class, at most 1::

    >>> caps_from([measurement("gemm_bf16", {}, 1.0, 4e11, 1e9, 1e15, 2e12)])
    {'eta_gemm': 0.4, 'eta_w': 0.5}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

from pytest_ppd.errors import ConfigError, MeasurementError
from pytest_ppd.roofline import attention_flops
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL, GpuSpec, ModelSpec, gpu_spec, model_spec

KIND, VERSION, EXIT_NO_GPU, DEFAULT_REPS = "ppd-microbench", 1, 2, 20
FLUSH_BYTES = 256 << 20  # more than any L2 (50 MiB on H100): weights and KV come from HBM, not cache
# Which measured efficiency bounds which cost-model coefficient (sim/costmodel.py's EFFICIENCY_CAPS).
CAP_SOURCES = {"eta_gemm": ("gemm_bf16", "flop_efficiency"), "eta_w": ("gemm_bf16", "byte_efficiency"),
               "eta_attn": ("attention", "flop_efficiency"), "eta_kv": ("attention", "byte_efficiency")}
FP8_CAP_SOURCES = {"eta_gemm": ("gemm_fp8", "flop_efficiency"), "eta_w": ("gemm_fp8", "byte_efficiency")}
_SMI = ("clocks.sm", "clocks.mem", "clocks.max.sm", "power.draw", "temperature.gpu")  # MHz, MHz, MHz, W, C


@dataclass(frozen=True)
class Grid:
    """What to measure: GEMM token counts, attention (m new, L cached) points, copy bytes, tiny-kernel launches."""
    tokens: tuple[int, ...]
    attention: tuple[tuple[int, int], ...]
    copy_bytes: int
    launches: int


GRIDS = {"full": Grid((1, 16, 128, 1024, 8192),
                      tuple((m, L) for L in (1024, 16384) for m in (1, 32, 128, 512, 4096)), 1 << 30, 2000),
         "quick": Grid((1, 128, 4096), ((1, 16384), (32, 4096), (512, 4096), (4096, 4096)), 256 << 20, 1000),
         "cpu": Grid((1, 8), ((1, 64), (8, 64)), 1 << 20, 100)}  # "cpu" checks the code path, not the machine


@dataclass(frozen=True)
class _Bench:
    torch: Any
    device: str
    reps: int
    flush: Any  # a tensor zeroed before each timed rep (None on a CPU)

    def randn(self, *shape: int) -> Any:
        return self.torch.randn(*shape, device=self.device, dtype=self.torch.bfloat16)


def _time_ms(b: _Bench, fn: Callable[[], object]) -> float:
    """Median ms of fn over b.reps runs after warm-up: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(max(2, b.reps // 5)):
        fn()
    if b.device != "cuda":
        return statistics.median(timeit.repeat(fn, number=1, repeat=b.reps)) * 1e3
    samples = []
    for _ in range(b.reps):
        b.flush.zero_()
        start, end = b.torch.cuda.Event(enable_timing=True), b.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def measurement(op: str, shape: dict[str, Any], ms: float, flops: float, nbytes: float,
                peak_flops: float, peak_bytes_per_s: float) -> dict[str, Any]:
    """One timed op, derived: achieved = work / (ms / 1e3); flop/byte efficiency = achieved / peak; 'efficiency'
    is the larger of the two (how close to its roofline the op ran)."""
    if not ms > 0:
        raise MeasurementError(f"{op} {shape}: a time of {ms} ms cannot be right")
    flop_s, bytes_s = flops / (ms / 1e3), nbytes / (ms / 1e3)
    flop_eff, byte_eff = flop_s / peak_flops, bytes_s / peak_bytes_per_s
    return {"op": op, **shape, "ms": ms, "flops": flops, "bytes": nbytes, "achieved_flops": flop_s,
            "achieved_bytes_per_s": bytes_s, "flop_efficiency": flop_eff, "byte_efficiency": byte_eff,
            "efficiency": max(flop_eff, byte_eff)}


def caps_from(measurements: list[dict[str, Any]], sources: dict[str, tuple[str, str]] = CAP_SOURCES,
              ceiling: float = 1.0) -> dict[str, float]:
    """Each cap = the best efficiency of its class, clipped to 1.0 (L2 hits or a low table peak can exceed it)."""
    best = {key: [m[field] for m in measurements if m["op"] == op and "skipped" not in m]
            for key, (op, field) in sources.items()}
    return {key: min(ceiling, max(values)) for key, values in best.items() if values}


def gemm_shapes(model: ModelSpec) -> dict[str, tuple[int, int]]:
    """(n, k) of each linear layer, y[tokens, n] = x[tokens, k] @ W[n, k]^T."""
    h, d = model.hidden_size, model.head_dim
    return {"qkv": ((model.num_heads + 2 * model.num_kv_heads) * d, h), "o": (h, model.num_heads * d),
            "gate_up": (2 * model.intermediate_size, h), "down": (h, model.intermediate_size),
            "lm_head": (model.vocab_size, h)}


def _flashinfer(torch: Any, q: Any, k: Any, v: Any) -> Callable[[], object]:
    import flashinfer  # type: ignore[import-not-found]  # SGLang's attention kernels, where installed
    if q.shape[0] == 1:
        return partial(flashinfer.single_decode_with_kv_cache, q[0], k, v)
    return partial(flashinfer.single_prefill_with_kv_cache, q, k, v, causal=True)


def _sdpa(torch: Any, q: Any, k: Any, v: Any) -> Callable[[], object]:
    from torch.nn.attention.bias import causal_lower_right
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))  # NHD -> (1, heads, S, d)
    mask = causal_lower_right(q.shape[0], k.shape[0]) if q.shape[0] > 1 else None  # new queries = the last keys
    return partial(torch.nn.functional.scaled_dot_product_attention, q4, k4, v4, attn_mask=mask, enable_gqa=True)


ATTENTION_BACKENDS = {"flashinfer": _flashinfer, "sdpa": _sdpa}


def _measure(b: _Bench, model: ModelSpec, gpu: GpuSpec, grid: Grid, fp8: bool) -> list[dict[str, Any]]:
    """Every op of the grid: attention is one layer's, FLOPs and KV bytes as the cost model counts them; GEMM bytes
    are the weights'. An op that cannot run (a shape cuBLASLt refuses, a failing flashinfer) is skipped, with why."""
    torch, one, out = b.torch, b.torch.ones((), device=b.device, dtype=b.torch.float32), []

    def timed(op: str, shape: dict, build: Callable[[], Any], flops: float, nbytes: float, peak: float) -> None:
        try:  # build() lays the tensors out and returns the call to time
            out.append(measurement(op, shape, _time_ms(b, build()), flops, nbytes, peak, gpu.hbm_bytes_per_s))
        except Exception as exc:  # anything a kernel raises is a finding about this op, not a crash
            out.append({"op": op, **shape, "skipped": (str(exc).strip() or type(exc).__name__)[:300]})

    fp8_peak = getattr(gpu, "peak_fp8_flops", 0.0) or 2 * gpu.peak_flops  # 2x bf16 on Ada, Hopper, Blackwell
    gemms = {"gemm_bf16": (torch.bfloat16, gpu.peak_flops, torch.matmul)}  # x @ W.t(), as nn.Linear computes
    if fp8:  # W.t() is also the column-major second operand _scaled_mm wants
        gemms["gemm_fp8"] = (torch.float8_e4m3fn, fp8_peak, partial(torch._scaled_mm, scale_a=one, scale_b=one,
                                                                    out_dtype=torch.bfloat16))
    for op, (dtype, peak, matmul) in gemms.items():
        for layer, (n, k) in gemm_shapes(model).items():
            w = b.randn(n, k).to(dtype)
            for t in grid.tokens:
                timed(op, {"layer": layer, "tokens": t, "n": n, "k": k},
                      partial(partial, matmul, b.randn(t, k).to(dtype), w.t()), 2.0 * t * n * k,
                      n * k * w.element_size(), peak)
    backends = ["flashinfer", "sdpa"] if b.device == "cuda" and importlib.util.find_spec("flashinfer") else ["sdpa"]
    heads, kv_heads, d = model.num_heads, model.num_kv_heads, model.head_dim
    for m, L in grid.attention:
        q, k, v = b.randn(m, heads, d), b.randn(L + m, kv_heads, d), b.randn(L + m, kv_heads, d)
        for name in backends:
            timed("attention", {"m": m, "L": L, "heads": heads, "kv_heads": kv_heads, "head_dim": d, "backend": name},
                  partial(ATTENTION_BACKENDS[name], torch, q, k, v), attention_flops(model, m, L) / model.num_layers,
                  (L + m) * model.kv_bytes_per_token / model.num_layers, gpu.peak_flops)
    src = b.randn(grid.copy_bytes // 2)
    timed("copy", {"size_bytes": grid.copy_bytes}, partial(partial, torch.empty_like(src).copy_, src), 0.0,
          2.0 * grid.copy_bytes, gpu.peak_flops)
    return out


def _launch(b: _Bench, grid: Grid) -> dict[str, Any]:
    """Host seconds per launch of a tiny kernel (launch_s), the eager per-kernel time, and a CUDA graph's."""
    torch, x, host, eager = b.torch, b.torch.zeros(1, device=b.device), [], []
    sync = torch.cuda.synchronize if b.device == "cuda" else (lambda: None)
    for _ in range(max(3, b.reps // 4)):
        sync()
        t0 = time.perf_counter()
        for _ in range(grid.launches):
            x.add_(1.0)
        host.append((time.perf_counter() - t0) / grid.launches)
        sync()
        eager.append((time.perf_counter() - t0) / grid.launches)
    out = {"launch_s": statistics.median(host), "eager_kernel_s": statistics.median(eager), "kernels": grid.launches}
    if b.device == "cuda":
        graph, kernels = torch.cuda.CUDAGraph(), 100
        with torch.cuda.graph(graph):  # captures on its own stream; x.add_ ran eagerly above, so no lazy init
            for _ in range(kernels):
                x.add_(1.0)
        out["graph_kernel_s"] = _time_ms(b, graph.replay) / 1e3 / kernels
    return out


def gpu_clocks(gpu: str = "") -> dict[str, Any]:
    """nvidia-smi's clocks, power and temperature of a GPU (default: the first torch sees), or why they are missing."""
    gpu = gpu or os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0] or "0"
    argv = ["nvidia-smi", f"--query-gpu={','.join(_SMI)}", "--format=csv,noheader,nounits", "-i", gpu]
    try:
        row = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=True).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": str(exc)}
    values = [float(v) if re.fullmatch(r"[\d.]+", v.strip()) else None for v in row.split(",")]  # "[N/A]": None
    return {"available": True, **dict(zip(_SMI, values))}


def run(model: str | ModelSpec, gpu: str | GpuSpec, *, device: str = "cuda", quick: bool = False,
        reps: int = DEFAULT_REPS, grid: Grid | None = None) -> dict[str, Any]:
    """Measure every op on `device` and return the microbench JSON (see the module docstring)."""
    import torch
    spec, g, cuda, notes = model_spec(model), gpu_spec(gpu), device == "cuda", []
    if reps < 1:
        raise ConfigError(f"--reps {reps}: need at least 1 timed run per op, e.g. --reps {DEFAULT_REPS}")
    grid_name = "custom" if grid else "cpu" if not cuda else "quick" if quick else "full"
    grid = grid or GRIDS[grid_name]
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    ours, theirs = g.name.lower(), device_name.lower()  # 'H100-SXM' looks like 'NVIDIA H100 80GB HBM3'
    if not cuda:
        notes.append(f"measured on {device}: efficiencies against {g.name}'s peaks mean nothing, and "
                     "ppd calibrate --caps refuses this file")
    elif re.split(r"[-\s]", ours)[0] not in theirs or ("pcie" in ours) != ("pcie" in theirs):
        notes.append(f"--gpu {g.name} does not look like this device ({device_name}); its efficiencies are "
                     f"against {g.name}'s peaks")
    b = _Bench(torch, device, reps, torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device) if cuda else None)
    sm = torch.cuda.get_device_capability() if cuda else None
    fp8 = sm is not None and sm >= (8, 9) and hasattr(torch, "_scaled_mm")
    found = [] if fp8 else [{"op": "gemm_fp8", "layer": "all", "skipped": f"FP8 GEMMs need a GPU of compute capability "
                             f"8.9+ and torch._scaled_mm; this is {device_name}, {sm}, torch {torch.__version__}"}]
    clocks = {"before": gpu_clocks() if cuda else {}}
    with torch.inference_mode():
        found += _measure(b, spec, g, grid, fp8)
        launch = _launch(b, grid)
    clocks["after"] = gpu_clocks() if cuda else {}
    notes += [f"skipped {m['op']} {m.get('layer', m.get('backend'))}: {m['skipped']}" for m in found if "skipped" in m]
    raw = caps_from(found, {**CAP_SOURCES, **{f"fp8 {k}": v for k, v in FP8_CAP_SOURCES.items()}}, float("inf"))
    notes += [f"{key}: measured {value:.2f} of {g.name}'s peak, capped at 1 (L2 hits, or a low table peak)"
              for key, value in raw.items() if value > 1.0]
    return {"kind": KIND, "version": VERSION, "gpu": g.name, "device": device, "device_name": device_name,
            "model": spec.name, "torch": torch.__version__, "cuda": torch.version.cuda, "capability": sm,
            "reps": reps, "grid": grid_name, "clocks": clocks, "measurements": found,
            "caps": caps_from(found), "caps_fp8": caps_from(found, FP8_CAP_SOURCES),
            "launch_s": launch["launch_s"], "launch": launch, "warnings": notes,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def load_caps(path: str | Path, gpu: str | GpuSpec | None = None) -> dict[str, float]:
    """The efficiency caps of a `ppd microbench` JSON (each in (0, 1]); with gpu, the file must be that GPU's."""
    fix = f"run `ppd microbench -o {path}` on the GPU and pass that file"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read microbench file {path}: {exc}; {fix}") from None
    if (found := (doc.get("kind"), doc.get("version")) if isinstance(doc, dict) else None) != (KIND, VERSION):
        raise ConfigError(f"{path} is not a {KIND} version {VERSION} file (found {found}); {fix}")
    if doc.get("device") != "cuda":
        raise ConfigError(f"{path} was measured on {doc.get('device')!r}, not a GPU: its numbers mean nothing; {fix}")
    if gpu is not None and doc.get("gpu") != gpu_spec(gpu).name:
        raise ConfigError(f"{path} measured {doc.get('gpu')}, not {gpu_spec(gpu).name}; {fix}")
    caps: dict[str, Any] = doc["caps"] if isinstance(doc.get("caps"), dict) else {}
    if missing := [key for key in CAP_SOURCES if key not in caps]:
        raise ConfigError(f"{path}: caps lack {', '.join(missing)}; {fix}")
    for key, value in ((key, caps[key]) for key in CAP_SOURCES):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{path}: caps {key}={value!r} must be a number in (0, 1]; {fix}")
    return {key: float(caps[key]) for key in CAP_SOURCES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"whose GEMM shapes (default: {DEFAULT_MODEL})")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"this GPU, for its peaks (default: {DEFAULT_GPU})")
    parser.add_argument("-o", "--output", default=None, help="JSON to write (default: microbench-<gpu>.json)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, metavar="N",
                        help=f"timed runs per op, the median kept (default: {DEFAULT_REPS})")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (default: the full grid)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)


def cmd_microbench(args: argparse.Namespace) -> int:
    try:
        import torch
        build = f"CUDA {torch.version.cuda}" if getattr(torch.version, "cuda", None) else "a CPU-only build"
        ok = args.device == "cpu" or torch.cuda.is_available()
        reason = "" if ok else f"torch {torch.__version__} ({build}) sees no GPU"
    except ImportError as exc:
        reason = f"torch is not installed ({exc})"
    if reason:
        print(f"ppd microbench needs a CUDA GPU and torch (pip install torch); none found: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    gpu = gpu_spec(args.gpu)
    out = Path(args.output or f"microbench-{gpu.name}.json")
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"-o {out}: {'a directory' if out.is_dir() else f'no directory {out.parent}'}; "
                          "name a file in an existing directory")
    try:
        result = run(args.model, gpu, device=args.device, quick=args.quick, reps=args.reps)
    except RuntimeError as exc:  # torch's own: CUDA out of memory, a kernel error
        raise MeasurementError(f"a kernel failed: {str(exc).strip().splitlines()[0]}") from exc
    for note in result["warnings"]:
        print(f"ppd microbench: warning: {note}", file=sys.stderr)
    out.write_text(json.dumps(result, indent=2) + "\n")
    caps = ", ".join(f"{k} {v:.2f}" for k, v in result["caps"].items())
    print(f"ppd microbench: {result['device_name']} as {gpu.name}: {caps}; "
          f"launch {result['launch_s'] * 1e6:.1f} us; wrote {out}")
    return 0
