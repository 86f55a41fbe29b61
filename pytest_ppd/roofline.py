"""The roofline, once, at the bottom: the physical floor of an append-prefill and the per-operator
times the router and the sim's cost model scale by their efficiencies.

An append of m new tokens to L cached tokens, for BS conversations at once,
needs at least

    FLOPs = 2 * N_nonembedding * BS * m
          + 4 * layers * heads * head_dim * m * (L + (m + 1) / 2) * BS
    bytes = weights read once + KV read  (BS * (L + m) * kv_bytes_per_token)

and so at least max(FLOPs / peak FLOP/s, bytes / HBM B/s) seconds::

    >>> round(floor_ms("Llama-3.1-8B", "H100-SXM", 1, 4096, 8192))
    151
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_ppd.specs import GpuSpec, ModelSpec, gpu_spec, model_spec


@dataclass(frozen=True)
class Work:
    """FLOPs and HBM bytes of one forward pass, split by operator class."""

    flops_linear: float
    flops_attn: float
    bytes_weights: float
    bytes_kv: float

    @property
    def flops(self) -> float:
        return self.flops_linear + self.flops_attn

    @property
    def bytes(self) -> float:
        return self.bytes_weights + self.bytes_kv


def attention_flops(model: ModelSpec, new: float, prefix: float) -> float:
    """Causal attention FLOPs of `new` tokens after `prefix` cached ones (QK^T and PV)."""
    return 4.0 * model.num_layers * model.num_heads * model.head_dim * new * (prefix + (new + 1) / 2)


def append_work(model: ModelSpec | str, bs: int, L: int, m: int) -> Work:
    """Work of appending m tokens to L cached tokens in each of bs conversations."""
    spec = model_spec(model)
    _check_point(bs, L, m)
    return Work(
        flops_linear=2.0 * spec.nonembedding_params * bs * m,
        flops_attn=attention_flops(spec, m, L) * bs,
        bytes_weights=float(spec.step_weight_bytes),
        bytes_kv=float(bs) * (L + m) * spec.kv_bytes_per_token,
    )


def _check_point(bs: int, L: int, m: int) -> None:
    if bs < 1 or L < 0 or m < 1:
        raise ValueError(f"need bs >= 1, L >= 0, m >= 1; got bs={bs}, L={L}, m={m}")


def gemm_peak_flops(model: ModelSpec, gpu: GpuSpec) -> float:
    """Peak FLOP/s of the model's block GEMMs: FP8 where the checkpoint is FP8 and the GPU has FP8 tensor cores."""
    if model.quantization == "fp8" and gpu.peak_fp8_flops:
        return gpu.peak_fp8_flops
    return gpu.peak_flops


def floor_s(model: ModelSpec | str, gpu: GpuSpec | str, bs: int, L: int, m: int) -> float:
    spec, g = model_spec(model), gpu_spec(gpu)
    work = append_work(spec, bs, L, m)
    compute = work.flops_linear / gemm_peak_flops(spec, g) + work.flops_attn / g.peak_flops
    return max(compute, work.bytes / g.hbm_bytes_per_s)


def floor_ms(model: ModelSpec | str, gpu: GpuSpec | str, bs: int, L: int, m: int) -> float:
    """Physical floor of the batch latency, in ms, at 100% of peak FLOP/s and HBM bandwidth."""
    return floor_s(model, gpu, bs, L, m) * 1e3


def bound_s(flops: float, nbytes: float, gpu: GpuSpec, flop_efficiency: float = 1.0,
            byte_efficiency: float = 1.0) -> float:
    """Time of work bound by compute or by HBM traffic, whichever is slower, at the given efficiencies."""
    return max(flops / (flop_efficiency * gpu.peak_flops), nbytes / (byte_efficiency * gpu.hbm_bytes_per_s))


def operator_times_s(work: Work, gpu: GpuSpec, model: ModelSpec | None = None) -> tuple[float, float]:
    """(linear layers, attention): each operator class at 100% of peak FLOP/s or HBM bandwidth (the linear
    layers at the FP8 peak for an FP8 model)."""
    peak = gemm_peak_flops(model, gpu) if model is not None else gpu.peak_flops
    linear = max(work.flops_linear / peak, work.bytes_weights / gpu.hbm_bytes_per_s)
    return linear, bound_s(work.flops_attn, work.bytes_kv, gpu)
