"""Command line of the simulated engine: SGLang's launch_server flags plus --sim-*.

The SGLang flags keep SGLang 0.5.23's spelling and defaults, so one command
builder serves both backends; ``--sim-*`` flags choose the simulated hardware.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.costmodel import ATTENTION_TILES, CostModel, CostProfile
from pytest_ppd.sim.memory import no_pool_message
from pytest_ppd.sim.engine import Engine
from pytest_ppd.sglang_defaults import MAX_PREFILL_TOKENS, NUM_RESERVED_DECODE_TOKENS, ServerDefaults, server_defaults
from pytest_ppd.specs import (DEFAULT_GPU, DEFAULT_LINK, GpuSpec, LinkSpec, ModelSpec, gpu_spec, link_spec,
                              model_spec)

DISAGG_MODES = ("null", "prefill", "decode")
TABLE_PREFIX = "dynamo:"  # --sim-profile dynamo:DIR (sim/tablecost.py)
AIC_PREFIX = "aic:"  # --sim-profile aic:SYSTEM:BACKEND (sim/aiccost.py, the [aic] extra)
TRANSFER_BACKENDS = ("mooncake", "nixl", "ascend", "fake", "mori", "mooncake_tcp")
LOAD_FORMATS = ("auto", "pt", "safetensors", "npcache", "dummy", "sharded_state", "gguf",
                "bitsandbytes", "layered", "remote", "remote_instance", "fastsafetensors",
                "private", "runai_streamer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pytest_ppd.sim",
        description="SGLang-compatible simulated engine (HTTP API, P/D bootstrap, radix cache, "
        "continuous batching, roofline step times).",
    )
    sg = p.add_argument_group("SGLang launch_server flags (same spelling and defaults)")
    sg.add_argument("--model-path", "--model", required=True,
                    help="model directory with config.json, a config.json, or a built-in model name")
    sg.add_argument("--tokenizer-path", default=None)
    sg.add_argument("--served-model-name", default=None)
    sg.add_argument("--host", default="127.0.0.1")
    sg.add_argument("--port", type=int, default=30000)
    sg.add_argument("--tp-size", "--tp", type=int, default=1)
    sg.add_argument("--base-gpu-id", type=int, default=0)
    sg.add_argument("--mem-fraction-static", type=float, default=None)
    sg.add_argument("--max-total-tokens", type=int, default=None)
    sg.add_argument("--chunked-prefill-size", type=int, default=None)
    sg.add_argument("--max-running-requests", type=int, default=None)
    sg.add_argument("--page-size", type=int, default=None)
    sg.add_argument("--context-length", type=int, default=None)
    sg.add_argument("--disable-radix-cache", action="store_true")
    sg.add_argument("--skip-tokenizer-init", action="store_true")
    sg.add_argument("--enable-cache-report", action="store_true")  # usage.prompt_tokens_details (sim/openai.py)
    sg.add_argument("--load-format", default="auto", choices=LOAD_FORMATS)
    sg.add_argument("--enable-metrics", action="store_true")
    sg.add_argument("--api-key", default=None)
    sg.add_argument("--log-level", default="info")
    sg.add_argument("--random-seed", type=int, default=None)
    sg.add_argument("--disaggregation-mode", default="null", choices=DISAGG_MODES)
    sg.add_argument("--disaggregation-transfer-backend", default="mooncake", choices=TRANSFER_BACKENDS)
    sg.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    sg.add_argument("--disaggregation-ib-device", default=None)
    sg.add_argument("--disaggregation-decode-enable-radix-cache", action="store_true")
    sg.add_argument("--max-prefill-tokens", type=int, default=MAX_PREFILL_TOKENS)
    sg.add_argument("--num-reserved-decode-tokens", type=int, default=NUM_RESERVED_DECODE_TOKENS)
    sg.add_argument("--cuda-graph-max-bs-decode", type=int, default=None)
    sg.add_argument("--attention-backend", default=None, choices=sorted(ATTENTION_TILES),
                    help="attention kernels whose query tiles the cost model charges (default: SGLang's for the GPU)")
    sim = p.add_argument_group("simulation (--sim-*)")
    sim.add_argument("--sim-gpu", default=DEFAULT_GPU, help=f"GPU to simulate (default: {DEFAULT_GPU})")
    sim.add_argument("--sim-link", default=DEFAULT_LINK, help=f"P/D KV-transfer link (default: {DEFAULT_LINK})")
    sim.add_argument("--sim-link-sharing", default="fifo", choices=("fifo", "fair"),
                     help="concurrent KV transfers into this engine: one at a time (fifo, default) or sharing the "
                          "link's bandwidth (fair: virtual time only, e.g. ppd cluster)")
    sim.add_argument("--sim-profile", default=None,
                     help="cost profile JSON, dynamo:DIR to interpolate step times from a profile written by "
                          "ppd profile or Dynamo's profiler, or aic:[SYSTEM[:BACKEND[@VERSION]]] for the GPU time "
                          "of AIConfigurator's measured per-operator tables (the [aic] extra), e.g. aic:auto:sglang "
                          "(default: built-in)")
    sim.add_argument("--sim-slowdown", type=float, default=1.0,
                     help="multiply every step time by this factor >= 1 (default: 1.0)")
    sim.add_argument("--sim-slow-prompt", action="append", default=[], metavar="LEN:FACTOR",
                     help="stretch the server time to first token of requests with a prompt of LEN tokens by "
                          "FACTOR (what-if and regression-gate studies); repeatable")
    sim.add_argument("--sim-fault", action="append", default=[], metavar="KIND@N[+][:ARG]",
                     help="inject a fault (see pytest_ppd/sim/faults.py); repeatable")
    sim.add_argument("--sim-gpu-ledger", default=None, metavar="DIR",
                     help="engines sharing a GPU: size the KV pool from the memory the others left free, as SGLang "
                          "does (sim/memory.py; default: the whole GPU is this engine's)")
    sim.add_argument("--sim-load-s", type=float, default=0.0,
                     help="with --sim-gpu-ledger: seconds the weights take to load (default: 0)")
    sim.add_argument("--sim-kv-timeout", type=float, default=300.0,
                     help="decode side: seconds to wait for a room's KV (default: 300)")
    return p


@dataclass(frozen=True)
class SimConfig:
    """Parsed and resolved engine configuration."""

    args: argparse.Namespace
    model: ModelSpec
    gpu: GpuSpec
    link: LinkSpec
    mem_fraction_static: float
    chunked_prefill_size: int
    max_running_requests: int
    page_size: int
    context_length: int
    pool_tokens: int
    faults: tuple = ()
    slow_prompts: tuple = ()
    defaults: ServerDefaults | None = None  # everything SGLang 0.5.23 resolved (sglang_defaults.py)

    @property
    def resolved(self) -> ServerDefaults:
        assert self.defaults is not None
        return self.defaults


def resolve(argv: list[str] | None = None, memory: tuple[float, float] | None = None) -> SimConfig:
    """Parse argv and derive every default; raises ConfigError with the fix on bad values. memory: the GPU's
    free bytes before and after loading the weights, where other engines share it (sim/memory.py)."""
    args = build_parser().parse_args(argv)
    model = model_spec(args.model_path)
    gpu, link = gpu_spec(args.sim_gpu), link_spec(args.sim_link)
    if args.tp_size < 1:
        raise ConfigError("--tp-size must be >= 1")
    if args.page_size is not None and args.page_size < 1:
        raise ConfigError("--page-size must be >= 1")
    if args.mem_fraction_static is not None and not 0 < args.mem_fraction_static < 1:
        raise ConfigError(f"--mem-fraction-static must be in (0, 1), got {args.mem_fraction_static}")
    if args.sim_slowdown < 1.0:
        raise ConfigError(f"--sim-slowdown must be >= 1.0, got {args.sim_slowdown}")
    if (args.sim_profile or "").startswith(AIC_PREFIX):  # the spec and its GPU, before anything loads
        from pytest_ppd.sim.aiccost import parse_spec, system_for

        system_for(gpu, parse_spec(args.sim_profile)[0])
    d = server_defaults(
        model, gpu, args.disaggregation_mode, args.tp_size, mem_fraction=args.mem_fraction_static,
        chunked_prefill_size=args.chunked_prefill_size, page_size=args.page_size,
        max_running=args.max_running_requests, max_total_tokens=args.max_total_tokens,
        context_length=args.context_length, cuda_graph_max_bs=args.cuda_graph_max_bs_decode,
        disable_radix_cache=args.disable_radix_cache, memory=memory)
    if args.disaggregation_mode == "decode" and args.disaggregation_decode_enable_radix_cache:
        d = replace(d, disable_radix_cache=args.disable_radix_cache)
    d = replace(d, max_prefill_tokens=args.max_prefill_tokens,
                num_reserved_decode_tokens=args.num_reserved_decode_tokens)
    frac, pool = d.mem_fraction_static, d.pool_tokens
    if pool <= 0 and memory is not None:
        raise ConfigError(no_pool_message(*memory, frac))
    if pool <= 0:
        raise ConfigError(
            f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no KV pool on "
            f"{gpu.name} at --mem-fraction-static {frac}; raise it, raise --tp-size, or pick a larger --sim-gpu")
    from pytest_ppd.sim.faults import parse_fault

    faults = tuple(parse_fault(f) for f in args.sim_fault)
    slow = []
    for spec in args.sim_slow_prompt:
        try:
            length, factor = spec.split(":")
            slow.append((int(length), float(factor)))
        except ValueError:
            raise ConfigError(f"--sim-slow-prompt '{spec}': use LEN:FACTOR, e.g. 1536:1.2") from None
        if slow[-1][1] < 1.0:
            raise ConfigError(f"--sim-slow-prompt '{spec}': FACTOR must be >= 1 (a floor never drops)")
    return SimConfig(
        args=args, model=model, gpu=gpu, link=link, mem_fraction_static=frac,
        chunked_prefill_size=d.chunked_prefill_size, max_running_requests=max(d.max_running_requests, 1),
        page_size=d.page_size, context_length=d.context_length, pool_tokens=pool, faults=faults,
        slow_prompts=tuple(slow), defaults=d,
    )


def profile_for(args: argparse.Namespace) -> CostProfile:
    """--sim-profile (default: built-in) with --sim-slowdown applied."""
    table = args.sim_profile and args.sim_profile.startswith((TABLE_PREFIX, AIC_PREFIX))
    profile = CostProfile.load(args.sim_profile) if args.sim_profile and not table else CostProfile()
    if args.sim_slowdown != 1.0:
        profile = replace(profile, slowdown=args.sim_slowdown)
    return profile


def engine_for(cfg: SimConfig, profile: CostProfile) -> Engine:
    """The engine core as SGLang 0.5.23 would be configured by cfg's flags (served or virtual driver)."""
    d = cfg.resolved
    backend = cfg.args.attention_backend or d.attention_backend
    source = cfg.args.sim_profile or ""
    if source.startswith(TABLE_PREFIX):  # step times interpolated from a measured (Dynamo-format) profile
        from pytest_ppd.sim.tablecost import TableCostModel

        cost: CostModel = TableCostModel(cfg.model, cfg.gpu, source[len(TABLE_PREFIX):], profile,
                                         cfg.args.tp_size, backend)
    elif source.startswith(AIC_PREFIX):  # GPU time from AIConfigurator's measured per-operator tables
        from pytest_ppd.sim.aiccost import AicCostModel, parse_spec

        cost = AicCostModel(cfg.model, cfg.gpu, *parse_spec(source), profile, cfg.args.tp_size, backend)
    else:
        cost = CostModel(cfg.model, cfg.gpu, profile, tp_size=cfg.args.tp_size, attention_backend=backend)
    return Engine(cost, cfg.pool_tokens,
                  mode=cfg.args.disaggregation_mode, chunked_prefill_size=cfg.chunked_prefill_size,
                  max_running_requests=cfg.max_running_requests, page_size=cfg.page_size,
                  disable_radix_cache=d.disable_radix_cache, max_prefill_tokens=d.max_prefill_tokens,
                  num_reserved_decode_tokens=d.num_reserved_decode_tokens if d.mode == "decode" else 0,
                  cuda_graph_max_bs=d.cuda_graph_max_bs if d.cuda_graph_max_bs > 0 else None)
