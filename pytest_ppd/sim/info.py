"""What /server_info answers: SGLang 0.5.23's keys and nesting (entrypoints/http_server.py and the
scheduler's internal_state.py), from the engine's resolved configuration, plus a "sim" section.

    server_info_body(cfg, engine, profile, {"steps": 10})["internal_states"][0]["max_total_num_tokens"]
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from pytest_ppd import __version__
from pytest_ppd.sim.args import SimConfig
from pytest_ppd.sim.costmodel import CostProfile
from pytest_ppd.sim.api import realtime
from pytest_ppd.sim.engine import Engine, SimRequest


def server_info_body(cfg: SimConfig, engine: Engine, profile: CostProfile, sim_extra: dict[str, Any]) -> dict[str, Any]:
    """The flat resolved arguments, the scheduler's numbers, internal_states per DP rank, the version."""
    d = cfg.resolved
    args = {k: v for k, v in vars(cfg.args).items() if not k.startswith("sim_") and k != "api_key"}
    args.update(mem_fraction_static=d.mem_fraction_static, chunked_prefill_size=d.chunked_prefill_size,
                max_prefill_tokens=d.max_prefill_tokens, page_size=d.page_size,
                attention_backend=d.attention_backend, disable_radix_cache=d.disable_radix_cache,
                context_length=d.context_length, num_reserved_decode_tokens=cfg.args.num_reserved_decode_tokens,
                cuda_graph_config={
                    "decode": {"backend": "full" if d.cuda_graph_max_bs else "disabled",
                               "max_bs": d.cuda_graph_max_bs or None},
                    "prefill": {"backend": "disabled" if d.mode == "decode" else "breakable",
                                "max_bs": None if d.mode == "decode" else d.chunked_prefill_size}})
    kv = cfg.model.kv_bytes_per_token
    internal = {
        **args, "max_total_num_tokens": cfg.pool_tokens, "max_req_input_len": d.max_req_input_len,
        "effective_max_running_requests_per_dp": cfg.max_running_requests, "last_gen_throughput": 0.0,
        "memory_usage": {"weight": cfg.model.weight_bytes / 2**30, "kvcache": engine.used_tokens * kv / 2**30,
                         "token_capacity": cfg.pool_tokens},
        "avg_spec_accept_length": None,
    }
    sim = {"pytest_ppd": __version__, "gpu": cfg.gpu.name, "link": cfg.link.name, "profile": asdict(profile),
           "kv_bytes_per_token": kv, "cached_tokens_in_tree": engine.cache.total_size, **sim_extra}
    return {**args, "max_total_num_tokens": cfg.pool_tokens, "max_req_input_len": d.max_req_input_len,
            "internal_states": [internal], "version": "0.5.23", "sim": sim}


def model_info_body(cfg: SimConfig) -> dict[str, Any]:
    """/model_info (/get_model_info): where the router looks for a tokenizer directory."""
    config = cfg.model.config or {}
    return {"model_path": cfg.args.model_path, "tokenizer_path": cfg.args.tokenizer_path or cfg.args.model_path,
            "is_generation": True, "preferred_sampling_params": None, "weight_version": "default",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": config.get("model_type"), "architectures": config.get("architectures")}


def meta_info(req: SimRequest, created_s: float, wait_queue_entry_s: float, final: bool, *,
              metrics: bool) -> dict[str, Any]:
    """A /generate chunk's meta_info as SGLang 0.5.23 writes it; with --enable-metrics (metrics) its time
    stamps too (Unix times from the served engine's perf_counter clock, latencies in seconds)."""
    meta: dict[str, Any] = {
        "id": req.rid, "finish_reason": req.finish_reason if final else None,
        "prompt_tokens": req.prompt_len, "weight_version": "default", "num_retractions": 0,
    }
    if metrics:
        if req.forward_entry_s is not None:
            meta["forward_entry_time"] = realtime(req.forward_entry_s)
            meta["queue_time"] = req.forward_entry_s - wait_queue_entry_s
        if req.prefill_finished_s is not None:
            meta["prefill_finished_time"] = realtime(req.prefill_finished_s)
    meta.update(reasoning_tokens=0, completion_tokens=len(req.output_ids), cached_tokens=req.cached_tokens)
    if final:
        now = time.perf_counter()
        meta["e2e_latency"] = now - created_s
        if metrics:
            meta["request_received_ts"] = realtime(created_s)
            if req.first_token_s is not None:
                meta["first_token_latency"] = req.first_token_s - created_s
            meta["response_sent_to_client_ts"] = realtime(now)
            meta["request_finished_ts"] = realtime(now)
            if req.first_token_s is not None and len(req.output_ids) > 1:
                meta["decode_throughput"] = (len(req.output_ids) - 1) / max(now - req.first_token_s, 1e-9)
    return meta
