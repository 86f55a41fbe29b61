"""Step time of one engine forward pass, from a roofline of (GpuSpec, ModelSpec).

Per operator class, each bounded by compute or by HBM traffic::

    T = c0 + max(F_linear / (eta_gemm P), B_weights / (eta_w W))
           + max(F_attn / (eta_attn P), B_kv / (eta_kv W))
           + sum over requests admitted in this step of (request_cpu + token_cpu x prompt tokens),
             less the wall time the serving host already spent on them (a served sim's own parsing)

P and W are the GPU's peak FLOP/s and HBM bytes/s; the efficiencies are capped
at what the hardware can reach, so a step is never faster than its floor. The
coefficients live in a profile (JSON), which ``ppd calibrate`` can fit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from pytest_ppd.roofline import attention_flops, bound_s
from pytest_ppd.errors import ConfigError
from pytest_ppd.specs import GpuSpec, ModelSpec

# What GEMMs and HBM streams reach at best on H100-class parts.
EFFICIENCY_CAPS = {"eta_gemm": 0.8, "eta_w": 0.9, "eta_attn": 0.8, "eta_kv": 0.9}


@dataclass(frozen=True)
class CostProfile:
    """Coefficients of the cost model. Times in seconds, efficiencies in (0, cap]."""

    name: str = "default"
    c0_prefill_s: float = 0.003  # launch + scheduler overhead of an extend batch
    c0_decode_s: float = 0.001  # a CUDA-graph decode step
    request_overhead_s: float = 0.002  # tokenizer-manager / detokenizer IPC per request (concurrent)
    # CPU work the scheduler does one request after another when it admits them (building the batch,
    # the prompt's ids and cache lookups): zero in the built-in profile, fitted by `ppd calibrate`.
    request_cpu_s: float = 0.0
    token_cpu_s: float = 0.0
    eta_gemm: float = 0.70
    eta_w: float = 0.85
    eta_attn: float = 0.55
    eta_kv: float = 0.80
    slowdown: float = 1.0  # multiplies every step (what-if and fault studies), >= 1
    # A decode batch above the CUDA-graph limit launches its ~400 kernels (32 layers x ~12) one by one: the
    # host's launch time mostly overlaps the GPU's work, but the GPU idles a few us between kernels that a
    # graph replays back to back (~400 x ~5 us).
    eager_decode_s: float = 0.002

    def __post_init__(self) -> None:
        for key, cap in EFFICIENCY_CAPS.items():
            value = getattr(self, key)
            if not 0 < value <= cap:
                raise ConfigError(f"cost profile {self.name!r}: {key}={value} must be in (0, {cap}]")
        for key in ("c0_prefill_s", "c0_decode_s", "request_overhead_s", "request_cpu_s", "token_cpu_s",
                    "eager_decode_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"cost profile {self.name!r}: {key} must be >= 0")
        if self.slowdown < 1.0:
            raise ConfigError(f"cost profile {self.name!r}: slowdown must be >= 1.0 (a floor never drops)")

    @classmethod
    def load(cls, path: str | Path) -> "CostProfile":
        """Read a profile JSON written by `ppd calibrate` (unknown keys are an error)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read cost profile {path}: {exc}") from None
        known = {f.name for f in fields(cls)}
        coeffs = data.get("coefficients", data) if isinstance(data, dict) else None
        if not isinstance(coeffs, dict) or set(coeffs) - known:
            extra = sorted(set(coeffs or {}) - known) if isinstance(coeffs, dict) else coeffs
            raise ConfigError(f"cost profile {path}: unexpected keys {extra}; accepted: {sorted(known)}")
        return cls(**coeffs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"coefficients": asdict(self)}, indent=2) + "\n")


@dataclass(frozen=True)
class Extend:
    """`new` tokens computed after `prefix` tokens already in the KV cache."""

    new: int
    prefix: int
    logits: bool = True  # whether this chunk ends the prompt (one lm_head row)
    admitted_prompt: int = 0  # the whole prompt's length when the request is admitted in this step
    host_s: float = 0.0  # wall time the serving host already spent on it before the engine saw it


class CostModel:
    """Maps a batch (extend chunks or decode contexts) to its step time."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, profile: CostProfile | None = None,
                 tp_size: int = 1) -> None:
        self.model, self.gpu = model, gpu
        self.profile = profile or CostProfile()
        self.tp_size = tp_size

    def _time(self, c0: float, tokens: int, logits: int, f_attn: float, b_kv: float) -> float:
        p, m, g = self.profile, self.model, self.gpu
        tp = self.tp_size
        f_linear = (2.0 * m.nonembedding_params * tokens + 2.0 * m.lm_head_params * logits) / tp
        b_weights = m.step_weight_bytes / tp
        linear = bound_s(f_linear, b_weights, g, p.eta_gemm, p.eta_w)
        attn = bound_s(f_attn / tp, b_kv / tp, g, p.eta_attn, p.eta_kv)
        allreduce = 0.0 if tp == 1 else 2 * m.num_layers * 10e-6
        return (c0 + linear + attn + allreduce) * p.slowdown

    def extend_time(self, chunks: Iterable[Extend]) -> float:
        """Step time of one extend (prefill) batch."""
        chunks = list(chunks)
        tokens = sum(c.new for c in chunks)
        f_attn = sum(attention_flops(self.model, c.new, c.prefix) for c in chunks)
        b_kv = sum(c.prefix + c.new for c in chunks) * self.model.kv_bytes_per_token
        logits = sum(1 for c in chunks if c.logits)
        p = self.profile
        admitted = [c for c in chunks if c.admitted_prompt]
        cpu = sum(p.request_cpu_s + p.token_cpu_s * c.admitted_prompt for c in admitted)
        # A served sim parses the same requests on a real CPU, one after another: what its host already
        # spent is part of that serial work, not on top of it (a calibrated profile would count it twice).
        cpu = max(cpu - max((c.host_s for c in admitted), default=0.0), 0.0)
        return self._time(p.c0_prefill_s + cpu, tokens, logits, f_attn, b_kv)

    def decode_time(self, contexts: Iterable[int], eager: bool = False) -> float:
        """Step time of one decode batch; contexts are each sequence's current length; eager: the batch is
        above the CUDA-graph limit, so its kernels are launched one by one."""
        contexts = list(contexts)
        c0 = self.profile.c0_decode_s + (self.profile.eager_decode_s if eager else 0.0)
        if not contexts:
            return c0 * self.profile.slowdown
        f_attn = sum(attention_flops(self.model, 1, c) for c in contexts)
        b_kv = (sum(contexts) + len(contexts)) * self.model.kv_bytes_per_token
        return self._time(c0, len(contexts), len(contexts), f_attn, b_kv)
