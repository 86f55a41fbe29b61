"""Step times from NVIDIA's AIConfigurator tables: ``--sim-profile aic:SYSTEM:BACKEND``.

``aiconfigurator-core`` (the ``[aic]`` extra) holds per-operator latencies
measured on each GPU (GEMMs, attention, norms, collectives) and sums them over a
model's op graph. The sim then keeps the roofline's host-side terms and swaps
its GPU term for that sum::

    extend:  T = c0_prefill + CPU + max(launch, L(tokens) + A(n, s, p))
    decode:  T = c0_decode [+ eager] + D(batch, mean context)

- L(tokens): every op but attention (GEMMs, norms, activation, lm_head for one
  row, all-reduces) run once over all the batch's new tokens;
- A(n, s, p): context attention of n sequences of s new tokens after p cached
  ones, at least A(n, s, 0): AIConfigurator times a prefix by scaling a cold
  prefill of p + s tokens by (full^2 - p^2) / full^2, which drops a short
  append's fixed cost, and a prefix only adds work. A batch of chunks of
  different lengths is looked up as n chunks of their mean new length s after
  the prefix p that keeps the batch's causal attention work, the sum of
  new_i x (prefix_i + new_i / 2): exact for a uniform batch (what a grid point
  sends), FLOP-proportional like AIConfigurator's own prefix correction. The
  lm_head of a batch that ends several prompts is timed for one row;
- D(batch, context): one decode step at the batch's mean context (decode
  attention streams the KV cache, linear in the total).

Grammar: ``aic:[SYSTEM[:BACKEND[@VERSION]]]``; SYSTEM ``auto`` (the default)
or the --sim-gpu's system (``SYSTEMS``); BACKEND ``sglang`` (the default),
``vllm`` or ``trtllm``; VERSION ``current`` (the default), ``previous``,
``next`` or a version AIConfigurator lists for that system. No step is ever
faster than the roofline floor of its work.
"""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.costmodel import EFFICIENCY_CAPS, CostModel, CostProfile, Extend
from pytest_ppd.specs import GpuSpec, ModelSpec

PREFIX = "aic:"
INSTALL = "pip install 'pytest-ppd[aic]'"
BACKENDS = ("sglang", "vllm", "trtllm")
# Our GPU names -> AIConfigurator's systems (systems/*.yaml); h100_pcie ships a spec but no tables.
SYSTEMS = {"H100-SXM": "h100_sxm", "H100-PCIe": "h100_pcie", "H200": "h200_sxm", "A100-80GB": "a100_sxm",
           "B200": "b200_sxm", "L40S": "l40s"}
FLOOR = CostProfile(name="floor", c0_prefill_s=0.0, c0_decode_s=0.0, request_overhead_s=0.0, launch_prefill_s=0.0,
                    eager_decode_s=0.0, attn_tile_q=1, **EFFICIENCY_CAPS)


def parse_spec(text: str) -> tuple[str, str]:
    """``aic:[SYSTEM[:BACKEND[@VERSION]]]`` -> (system, backend[@version]), defaults filled in.

    >>> parse_spec("aic:h100_sxm:sglang@next")
    ('h100_sxm', 'sglang@next')
    """
    fields = text[len(PREFIX):].split(":")
    if not text.startswith(PREFIX) or len(fields) > 2:
        raise ConfigError(f"--sim-profile {text}: use aic:[SYSTEM[:BACKEND[@VERSION]]], e.g. aic:auto:sglang or "
                          f"aic:h200_sxm:sglang@next")
    system = fields[0] or "auto"
    backend = (fields[1] if len(fields) > 1 else "") or "sglang"
    _split_backend(backend, text)
    if system != "auto" and system not in SYSTEMS.values():
        raise ConfigError(f"--sim-profile {text}: unknown system {system!r}; valid: auto, "
                          + ", ".join(f"{s} (--sim-gpu {g})" for g, s in SYSTEMS.items()))
    return system, backend


def _split_backend(backend: str, where: str) -> tuple[str, str]:
    name, _, version = backend.partition("@")
    if name not in BACKENDS or (not version and "@" in backend):
        raise ConfigError(f"--sim-profile {where}: backend {backend!r} is not NAME[@VERSION] with NAME one of "
                          f"{', '.join(BACKENDS)} (VERSION: current, previous, next or a listed version)")
    return name, version or "current"


def system_for(gpu: GpuSpec, system: str = "auto") -> str:
    """The AIConfigurator system that times `gpu`: `system` must be 'auto' or the GPU's own."""
    own = SYSTEMS.get(gpu.name)
    if own is None:
        raise ConfigError(f"--sim-profile aic: no AIConfigurator system for --sim-gpu {gpu.name}; "
                          f"use one of {', '.join(SYSTEMS)}")
    if system not in ("auto", own):
        raise ConfigError(f"--sim-profile aic:{system} times another GPU than --sim-gpu {gpu.name} ({own}); pass "
                          f"aic:auto or the --sim-gpu whose system it is: "
                          + ", ".join(f"{g}={s}" for g, s in SYSTEMS.items()))
    return own


def _aic() -> tuple[Any, Any, Any]:
    """AIConfigurator's engine handle, perf-database index and architecture table (ConfigError when absent)."""
    try:
        importlib.import_module("aiconfigurator_core")
        engine = importlib.import_module("aiconfigurator_core.sdk.engine")
        database = importlib.import_module("aiconfigurator_core.sdk.perf_database")
        common = importlib.import_module("aiconfigurator_core.sdk.common")
    except ImportError as exc:
        raise ConfigError(f"--sim-profile aic: needs the aiconfigurator-core package ({exc}); install it with "
                          f"{INSTALL}") from None
    return engine.EngineHandle, database, common.ARCHITECTURE_TO_MODEL_FAMILY


@contextmanager
def _quiet() -> Iterator[None]:
    """AIConfigurator warns while it loads tables (fallback rows of ops dense models never query)."""
    log = logging.getLogger("aiconfigurator_core")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _version(database: Any, system: str, backend: str, version: str, where: str) -> str:
    """The literal data version `version` (an alias or a listed version) names; ConfigError listing the rest."""
    with _quiet():
        slots = database.get_version_slots(system, backend)
    if slots is None:
        with _quiet():
            known = database.get_supported_databases()
        have = sorted(s for s, backends in known.items() if backend in backends and s in SYSTEMS.values())
        backends = sorted(known.get(system, {}))
        there = f"only {', '.join(backends)} ones" if backends else "none of any backend"
        raise ConfigError(f"--sim-profile {where}: AIConfigurator has no {backend} tables for {system} ({there}); "
                          f"{backend} tables exist for: {', '.join(have)}")
    try:
        return str(database.resolve_query_version(system, backend, version))
    except ValueError:
        listed = ", ".join(f"{alias}={v}" for alias, v in slots.items())
        raise ConfigError(f"--sim-profile {where}: {backend} on {system} has no version {version!r}; "
                          f"valid: {listed}") from None


def _quant_modes(model: ModelSpec) -> dict[str, str]:
    """AIConfigurator's quant modes for the checkpoint: FP8 GEMMs (block-scaled where the config says so)."""
    gemm = "bfloat16"
    if model.quantization == "fp8":
        block = ((model.config or {}).get("quantization_config") or {}).get("weight_block_size")
        gemm = "fp8_block" if block else "fp8"
    kv = "fp8" if model.kv_dtype_bytes == 1 else "bfloat16"
    return {"gemm_quant_mode": gemm, "kvcache_quant_mode": kv, "fmha_quant_mode": "bfloat16"}


def _compile(handle: Any, archs: Any, model: ModelSpec, system: str, backend: str, version: str, tp_size: int,
             where: str) -> Any:
    """Build AIConfigurator's engine for the model from its HF config (written where its loader reads one)."""
    config = model.to_config()
    arch = (config.get("architectures") or ["(none)"])[0]
    if arch == "MistralForCausalLM" and not config.get("sliding_window"):
        config["architectures"] = ["LlamaForCausalLM"]  # a Mistral without a sliding window is a Llama
    elif arch not in archs:
        raise ConfigError(f"--sim-profile {where}: AIConfigurator cannot model {model.name} ({arch}); it models "
                          f"{', '.join(sorted(archs))} (and MistralForCausalLM without a sliding window)")
    modes = _quant_modes(model)
    with tempfile.TemporaryDirectory(prefix="ppd-aic-") as directory, _quiet():
        (Path(directory) / "config.json").write_text(json.dumps(config))
        try:
            return handle.compile(directory, system, backend, backend_version=version, tp_size=tp_size, **modes)
        except Exception as exc:  # ValueError, NotImplementedError and AIConfigurator's own errors
            raise ConfigError(f"--sim-profile {where}: AIConfigurator cannot time {model.name} at tp {tp_size} "
                              f"({modes['gemm_quant_mode']} GEMMs) on {system} {backend} {version}: "
                              f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def attention_shape(chunks: Iterable[Extend]) -> tuple[int, int, int]:
    """(n, s, p): n sequences of s new tokens after p cached ones with the chunks' causal attention work,
    sum of new x (prefix + new / 2); a uniform batch maps onto itself.

    >>> attention_shape([Extend(new=100, prefix=0), Extend(new=100, prefix=400)])
    (2, 100, 200)
    """
    live = [c for c in chunks if c.new > 0]
    if not live:
        return 0, 0, 0
    n = len(live)
    new = sum(c.new for c in live) / n
    work = sum(c.new * (c.prefix + c.new / 2) for c in live)
    return n, max(round(new), 1), max(round(work / (n * new) - new / 2), 0)


class AicCostModel(CostModel):
    """A CostModel whose GPU time comes from AIConfigurator's measured per-operator tables.

    >>> cost = AicCostModel(model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM"), "auto", "sglang")  # doctest: +SKIP
    >>> cost.extend_time([Extend(new=512, prefix=3584)])  # doctest: +SKIP
    """

    def __init__(self, model: ModelSpec, gpu: GpuSpec, system: str = "auto", backend: str = "sglang",
                 profile: CostProfile | None = None, tp_size: int = 1, attention_backend: str | None = None) -> None:
        super().__init__(model, gpu, profile, tp_size, attention_backend)
        where = f"aic:{system}:{backend}"
        self.backend, version = _split_backend(backend, where)
        self.system = system_for(gpu, system)
        handle, database, archs = _aic()
        self.version = _version(database, self.system, self.backend, version, where)
        self._engine = _compile(handle, archs, model, self.system, self.backend, self.version, tp_size, where)
        try:  # some gaps (a quant mode the GPU lacks) only show when a table is first read
            self._engine.mixed_step_breakdown(2, 0, 2, 1, 1)
            self._engine.predict_decode_latency(1, 1, 2)
        except Exception as exc:
            raise ConfigError(f"--sim-profile {where}: AIConfigurator cannot time {model.name} on {self.system}: "
                              f"{_first_line(exc)}") from None
        self._floor = CostModel(model, gpu, FLOOR, tp_size, attention_backend)
        self.linear_ms = lru_cache(maxsize=1 << 16)(self._linear_ms)
        self.attention_ms = lru_cache(maxsize=1 << 16)(self._attention_ms)
        self.decode_ms = lru_cache(maxsize=1 << 16)(self._decode_ms)

    def _linear_ms(self, tokens: int) -> float:
        """L: every op but attention over `tokens` new tokens (pass 1 of AIConfigurator's mixed step)."""
        return float(self._engine.mixed_step_breakdown(tokens, 0, tokens, 1, 0)[1])

    def _attention_ms(self, n: int, s: int, p: int) -> float:
        """A: context attention of n sequences of s new tokens after p cached (pass 2 of its mixed step)."""
        return float(self._engine.mixed_step_breakdown(n * (s + p), 0, s + p, 1, p)[2])

    def _decode_ms(self, batch: int, context: int) -> float:
        """D: one decode step of `batch` sequences whose KV holds `context` tokens (attends to context + 1)."""
        return float(self._engine.predict_decode_latency(batch, context, 2))

    def extend_time(self, chunks: Iterable[Extend]) -> float:
        chunks = list(chunks)
        p = self.profile
        tokens = sum(c.new for c in chunks)
        gpu_ms = 0.0
        if tokens:
            n, new, prefix = attention_shape(chunks)
            # a prefix only adds work: AIConfigurator scales a cold prefill of prefix + new by
            # (full^2 - prefix^2) / full^2, which drops the kernel's fixed cost for a short append
            gpu_ms = self.linear_ms(tokens) + max(self.attention_ms(n, new, prefix), self.attention_ms(n, new, 0))
        admitted = [c for c in chunks if c.admitted_prompt]
        cpu = sum(p.request_cpu_s + p.token_cpu_s * c.admitted_prompt for c in admitted)
        cpu = max(cpu - max((c.host_s for c in admitted), default=0.0), 0.0)  # as CostModel.extend_time
        step = p.c0_prefill_s + cpu + max(p.launch_prefill_s, gpu_ms / 1e3)
        return max(step * p.slowdown, self._floor.extend_time(chunks))

    def decode_time(self, contexts: Iterable[int], eager: bool = False) -> float:
        contexts = list(contexts)
        p = self.profile
        c0 = p.c0_decode_s + (p.eager_decode_s if eager else 0.0)
        if not contexts:
            return c0 * p.slowdown
        gpu_ms = self.decode_ms(len(contexts), max(round(sum(contexts) / len(contexts)), 1))
        return max((c0 + gpu_ms / 1e3) * p.slowdown, self._floor.decode_time(contexts))

    def describe(self) -> dict[str, Any]:
        """What times the steps, for logs and headers."""
        return {"source": "aiconfigurator", "system": self.system, "backend": self.backend, "version": self.version}
