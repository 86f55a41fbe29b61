"""Step time of one engine forward pass, from a roofline of (GpuSpec, ModelSpec).

Per operator class, each bounded by compute or by HBM traffic::

    GPU = max(F_linear / (eta_gemm P_gemm), B_weights / (eta_w W))
        + max(F_attn_tiled / (eta_attn P), B_kv / (eta_kv W))
    T   = c0 + CPU + max(launch, GPU)

CPU is the scheduler's serial work on the requests admitted in this step
(request_cpu + token_cpu x prompt tokens, less what a serving host already
spent on them). ``launch`` is the host time to launch an eager extend forward's
kernels, which overlaps the GPU's work: a small step is launch-bound, a large one
GPU-bound, never their sum. Attention kernels compute queries in tiles
(``ATTENTION_TILES``), so an append of 8 tokens costs what a full tile costs per
cached token. Decode steps stream the weights at their own efficiency
(``eta_w_decode``: a CUDA-graph GEMV is not a prefill GEMM).

P_gemm is the GPU's peak for the model's GEMM dtype (FP8 where the checkpoint and
the GPU have it), P its bf16 peak, W its HBM bytes/s; the efficiencies are capped
at what the hardware can reach, so a step is never faster than its floor. The
coefficients live in a profile (JSON), which ``ppd calibrate`` can fit.
"""

from __future__ import annotations

import json
from importlib.machinery import EXTENSION_SUFFIXES
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pytest_ppd.errors import ConfigError
from pytest_ppd.roofline import attention_flops, bound_s, gemm_peak_flops
from pytest_ppd.sglang_defaults import ATTENTION_BACKEND
from pytest_ppd.sim.native import mypyc_attr, picklable
from pytest_ppd.specs import GpuSpec, ModelSpec

# What GEMMs and HBM streams reach at best on H100-class parts.
EFFICIENCY_CAPS = {"eta_gemm": 0.8, "eta_w": 0.9, "eta_attn": 0.8, "eta_kv": 0.9, "eta_w_decode": 0.9}

# Query rows one extend-attention tile computes in SGLang 0.5.23's backends (head_dim <= 128), and whether
# the backend packs the query heads that share a KV head into the tile (GQA packing), per GPU architecture:
# - fa3: hopper/tile_size.h kBlockM = 128; varlen batches always pack GQA (flash_api.cpp get_pack_gqa).
# - flashinfer: CTA_TILE_Q of 16, 64 or 128 picked from the packed query length (FA2DetermineCtaTileQ): 0 here.
# - triton: kernels/ops/attention/extend_attention.py BLOCK_M, one query head at a time.
# - trtllm_mha: not public; assumed to tile like flashinfer.
ATTENTION_TILES: dict[str, tuple[dict[str, int], bool]] = {
    "fa3": ({"hopper": 128}, True),
    "flashinfer": ({}, True),
    "trtllm_mha": ({}, True),
    "triton": ({"hopper": 128, "ampere": 128, "ada": 64, "blackwell": 64}, False),
}


def query_rows(model: ModelSpec, new: int, backend: str, arch: str, tile: int = 0) -> float:
    """The query rows (in tokens) an extend-attention kernel computes for `new` tokens: `new` rounded up to
    its backend's tile (tile > 0 overrides the backend's size)."""
    tiles, packed = ATTENTION_TILES.get(backend, ({}, True))
    group = model.num_heads // model.num_kv_heads if packed else 1
    rows = new * group
    size = tile or tiles.get(arch, 0) or (128 if rows > 64 else 64 if rows > 16 else 16)
    return -(-rows // size) * size / group


@dataclass(frozen=True)
class CostProfile:
    """Coefficients of the cost model. Times in seconds, efficiencies in (0, cap]."""

    name: str = "default"
    c0_prefill_s: float = 0.001  # the scheduler's serial overhead of an extend batch
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
    eta_w_decode: float = 0.85  # weight streaming of a decode step (fitted from decode steps only)
    # Host time to launch an eager extend forward's ~400 kernels (32 layers x ~12 at ~5 us): overlaps the GPU.
    launch_prefill_s: float = 0.002
    attn_tile_q: int = 0  # query rows per attention tile; 0: the attention backend's own (ATTENTION_TILES)
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
                    "eager_decode_s", "launch_prefill_s", "attn_tile_q"):
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


class Extend:
    """`new` tokens computed after `prefix` tokens already in the KV cache (a value: never changed; a plain
    class, made per chunk, so that a compiled build constructs it natively)."""

    __slots__ = ("new", "prefix", "logits", "admitted_prompt", "host_s")

    def __init__(self, new: int, prefix: int, logits: bool = True, admitted_prompt: int = 0,
                 host_s: float = 0.0) -> None:
        self.new, self.prefix = new, prefix
        self.logits = logits  # whether this chunk ends the prompt (one lm_head row)
        self.admitted_prompt = admitted_prompt  # the whole prompt's length when admitted in this step
        self.host_s = host_s  # wall time the serving host already spent on it before the engine saw it

    def _fields(self) -> tuple[int, int, bool, int, float]:
        return self.new, self.prefix, self.logits, self.admitted_prompt, self.host_s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Extend) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Extend(new={}, prefix={}, logits={}, admitted_prompt={}, host_s={})".format(*self._fields())

    def __reduce__(self) -> tuple[type, tuple[int, int, bool, int, float]]:
        return Extend, self._fields()  # pickled and copied as a call (compiled, it has no other way)


picklable(CostProfile)

# Decode runs this long compute their step times as arrays (shorter ones: a loop is faster; compiled, the loop is
# faster at any length). Both give the same times to the last bit (tests/test_decode_runs.py).
VECTOR_STEPS = 1 << 30 if __file__.endswith(tuple(EXTENSION_SUFFIXES)) else 24


@mypyc_attr(allow_interpreted_subclasses=True)  # table, AIConfigurator and calibration models extend it
class CostModel:
    """Maps a batch (extend chunks or decode contexts) to its step time."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, profile: CostProfile | None = None,
                 tp_size: int = 1, attention_backend: str | None = None) -> None:
        self.model, self.gpu = model, gpu
        self.profile = profile or CostProfile()
        self.tp_size = tp_size
        self.attention_backend = attention_backend or ATTENTION_BACKEND.get(gpu.arch, "flashinfer")

    def _gpu_s(self, tokens: int, logits: int, f_attn: float, b_kv: float, eta_w: float) -> float:
        return self._linear_s(tokens, logits, eta_w) + self._attn_s(f_attn, b_kv) + self._allreduce_s

    def _linear_s(self, tokens: int, logits: int, eta_w: float) -> float:
        p, m, g = self.profile, self.model, self.gpu
        tp = self.tp_size
        blocks = 2.0 * m.nonembedding_params * tokens / tp  # in the checkpoint's GEMM dtype
        lm_head = 2.0 * m.lm_head_params * logits / tp  # always bf16
        compute = (blocks / gemm_peak_flops(m, g) + lm_head / g.peak_flops) / p.eta_gemm
        return max(compute, m.step_weight_bytes / tp / (eta_w * g.hbm_bytes_per_s))

    def _attn_s(self, f_attn: float, b_kv: float) -> float:
        return bound_s(f_attn / self.tp_size, b_kv / self.tp_size, self.gpu, self.profile.eta_attn, self.profile.eta_kv)

    @property
    def _allreduce_s(self) -> float:
        return 0.0 if self.tp_size == 1 else 2 * self.model.num_layers * 10e-6

    def _attention_flops(self, new: int, prefix: int) -> float:
        """Causal attention FLOPs of `new` tokens after `prefix`, as the tiled kernel computes them."""
        rows = query_rows(self.model, new, self.attention_backend, self.gpu.arch, self.profile.attn_tile_q)
        m = self.model
        return 4.0 * m.num_layers * m.num_heads * m.head_dim * rows * (prefix + (new + 1) / 2)

    def extend_time(self, chunks: Iterable[Extend]) -> float:
        """Step time of one extend (prefill) batch."""
        chunks = list(chunks)
        tokens = sum(c.new for c in chunks)
        f_attn = sum(self._attention_flops(c.new, c.prefix) for c in chunks)
        b_kv = sum(c.prefix + c.new for c in chunks) * self.model.kv_bytes_per_token
        logits = sum(1 for c in chunks if c.logits)
        p = self.profile
        admitted = [c for c in chunks if c.admitted_prompt]
        cpu = sum(p.request_cpu_s + p.token_cpu_s * c.admitted_prompt for c in admitted)
        # A served sim parses the same requests on a real CPU, one after another: what its host already
        # spent is part of that serial work, not on top of it (a calibrated profile would count it twice).
        cpu = max(cpu - max((c.host_s for c in admitted), default=0.0), 0.0)
        gpu = self._gpu_s(tokens, logits, f_attn, b_kv, p.eta_w)
        return (p.c0_prefill_s + cpu + max(p.launch_prefill_s, gpu)) * p.slowdown

    def decode_time(self, contexts: Iterable[int], eager: bool = False) -> float:
        """Step time of one decode batch; contexts are each sequence's current length; eager: the batch is
        above the CUDA-graph limit, so its kernels are launched one by one."""
        contexts = list(contexts)
        c0 = self.profile.c0_decode_s + (self.profile.eager_decode_s if eager else 0.0)
        if not contexts:
            return c0 * self.profile.slowdown
        tokens = sum(contexts) + len(contexts)  # the contexts, plus each request's own new token
        per_token = attention_flops(self.model, 1, 0)
        if per_token.is_integer() and per_token * tokens < 2 ** 53:  # each term whole: their float sum is exact
            f_attn = per_token * tokens
        else:
            f_attn = sum(attention_flops(self.model, 1, c) for c in contexts)
        b_kv = tokens * self.model.kv_bytes_per_token
        gpu = self._gpu_s(len(contexts), len(contexts), f_attn, b_kv, self.profile.eta_w_decode)
        return (c0 + gpu) * self.profile.slowdown

    def decode_steps(self, contexts: Sequence[int], steps: int, eager: bool = False) -> list[float]:
        """Step times of ``steps`` decode steps of one batch, each context one token longer at each step:
        ``[decode_time([c + j for c in contexts], eager) for j in range(steps)]``, bit for bit. The roofline
        needs only the contexts' sum: each request's attention FLOPs are a whole number below 2**53, so their
        float sum is exact and equals the product taken here."""
        times = self.decode_step_times(contexts, steps, eager)
        return times if isinstance(times, list) else times.tolist()

    def decode_step_times(self, contexts: Sequence[int], steps: int, eager: bool = False) -> list[float] | np.ndarray:
        """decode_steps, as an array when there are VECTOR_STEPS or more (what a decode run consumes)."""
        n, total = len(contexts), sum(contexts)
        per_token = attention_flops(self.model, 1, 0)  # 4 L H D: the FLOPs of one cached token, and of itself
        exact = per_token.is_integer() and per_token * (total + n * steps) < 2 ** 53
        if type(self).decode_time is not CostModel.decode_time or not n or not exact:
            return [self.decode_time([c + j for c in contexts], eager) for j in range(steps)]
        p, g, tp, kv = self.profile, self.gpu, self.tp_size, self.model.kv_bytes_per_token
        c0, slowdown = p.c0_decode_s + (p.eager_decode_s if eager else 0.0), p.slowdown
        # _gpu_s(n, n, ...) of each step, its terms in the same order: the linear layers do not change
        linear, allreduce = self._linear_s(n, n, p.eta_w_decode), self._allreduce_s
        flops_den, bytes_den = p.eta_attn * g.peak_flops, p.eta_kv * g.hbm_bytes_per_s
        last = total + n * steps  # the largest token count below
        if steps >= VECTOR_STEPS and isinstance(kv, int) and last * kv < 2 ** 53:
            # The same operations in the same order on float64 arrays (IEEE: the same results; the token and
            # byte counts exact as floats), less the ones that are exact no-ops: / 1, + 0.0, * 1.0.
            counts = np.arange(total + n, last + n, n, dtype=np.int64)[:steps]
            flops, kv_bytes = per_token * counts, counts * kv
            if tp != 1:
                flops, shard = flops / tp, kv_bytes / tp
                times = np.maximum(flops / flops_den, shard / bytes_den)
            else:
                times = np.maximum(flops / flops_den, kv_bytes / bytes_den)
            times += linear  # linear + attn, in place
            if allreduce != 0.0:
                times += allreduce
            times += c0
            if slowdown != 1.0:
                times *= slowdown
            return times
        out: list[float] = []
        for j in range(1, steps + 1):
            tokens = total + n * j  # the contexts, plus each new token
            attn = max(per_token * tokens / tp / flops_den, tokens * kv / tp / bytes_den)
            out.append((c0 + (linear + attn + allreduce)) * slowdown)
        return out
