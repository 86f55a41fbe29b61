"""The physical floor of an append-prefill: no measurement may be faster.

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


def floor_s(model: ModelSpec | str, gpu: GpuSpec | str, bs: int, L: int, m: int) -> float:
    work = append_work(model, bs, L, m)
    g = gpu_spec(gpu)
    return max(work.flops / g.peak_flops, work.bytes / g.hbm_bytes_per_s)


def floor_ms(model: ModelSpec | str, gpu: GpuSpec | str, bs: int, L: int, m: int) -> float:
    """Physical floor of the batch latency, in ms, at 100% of peak FLOP/s and HBM bandwidth."""
    return floor_s(model, gpu, bs, L, m) * 1e3


def roofline_fraction(floor: float, measured: float) -> float:
    """floor / measured: 1.0 means the GPU ran at its roofline; above 1.0 is impossible."""
    if measured <= 0:
        raise ValueError(f"measured latency must be > 0, got {measured}")
    return floor / measured
