"""Server defaults derived the way SGLang 0.5.23 derives them, per GPU, TP and P/D mode.

The sim (``sim/args.py``), the virtual-time deployment, the importer's capacity
check and the feasibility checks all size engines here, so the simulated
engine's ``/server_info`` matches a real SGLang server's. Each rule names its
place in SGLang 0.5.23's source (paths inside the wheel, under ``sglang/srt/``);
flags given explicitly win, as in SGLang::

    d = server_defaults(model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM"), mode="decode")
    d.mem_fraction_static, d.pool_tokens, d.max_running_requests   # 0.874, 447732, 2048

What a CPU cannot know: SGLang sizes the pool from the memory free when it
starts (``cudaMemGetInfo``), after the CUDA context and driver take their share
(typically 0.5-1 GiB, ~8k tokens per GiB here); this module takes the GPU's
nvidia-smi total as free, so real pools come out up to ~2% smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_ppd.errors import ConfigError
from pytest_ppd.specs import GpuSpec, ModelSpec

MiB = 1 << 20
GiB = 1 << 30
MODES = ("null", "prefill", "decode")
# arg_groups/fields/schedule.py:71-81: a fixed default, independent of the GPU.
MAX_PREFILL_TOKENS = 16384
# arg_groups/fields/disagg.py:109-112: decode keeps this many tokens free per active request.
NUM_RESERVED_DECODE_TOKENS = 512
# Default attention backend by architecture (arg_groups/model_override_base.py:277-347, MHA/GQA models):
# Hopper with CUDA >= 12.3 -> fa3, SM100 with CUDA >= 12.8 -> trtllm_mha, otherwise flashinfer.
ATTENTION_BACKEND = {"hopper": "fa3", "blackwell": "trtllm_mha", "ampere": "flashinfer", "ada": "flashinfer"}


def memory_tier(gpu_mib: int, tp: int = 1) -> tuple[int, int]:
    """(chunked_prefill_size, decode CUDA-graph max batch) by GPU memory (arg_groups/memory_hook.py:89-170)."""
    if gpu_mib < 20 * 1024:
        return 2048, 8
    if gpu_mib < 35 * 1024:
        return 4096, 48 if tp < 4 else 160
    if gpu_mib < 60 * 1024:
        return 4096, 32 if tp < 4 else 160
    if gpu_mib < 160 * 1024:
        return 8192, 256 if tp < 4 else 512
    return 16384, 512


def prefill_graph_batches(max_bs: int) -> list[int]:
    """Prefill CUDA-graph batch sizes up to max_bs (model_executor/.../cuda_graph_hook.py:480-497)."""
    sizes = (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
             + list(range(576, 1025, 64)) + list(range(1280, 4097, 256)) + list(range(4608, max_bs + 1, 512)))
    return [s for s in sizes if s <= max_bs]


def mem_fraction_static(gpu_mib: int, mode: str, *, tp: int = 1, chunked_prefill_size: int,
                        decode_max_bs: int, max_running_requests: int | None = None,
                        max_prefill_tokens: int = MAX_PREFILL_TOKENS) -> float:
    """SGLang's reserve for activations and CUDA graphs, as a fraction (arg_groups/memory_hook.py:281-328).

    reserved MiB = 512 + 1.5 x activation tokens + TP/8 GiB + graph reserve, at least 10 GiB above 60 GiB;
    activation tokens: decode's max batch (>= 2048) in decode mode, else the chunk size (>= 2048);
    graph reserve (memory_hook.py:357-399): 2 MiB per decode-graph batch slot unless prefill mode (which
    disables decode graphs), 8 MiB per prefill graph unless decode mode (which disables prefill graphs).
    """
    if mode == "decode":
        activations = max(max_running_requests or decode_max_bs or 1, 2048)
    elif chunked_prefill_size > 0:
        activations = max(chunked_prefill_size, 2048)
    else:
        activations = max(max_prefill_tokens, 2048)
    graphs = 0.0
    if mode != "prefill":
        graphs += decode_max_bs * 2
    if mode != "decode":
        prefill_max_bs = chunked_prefill_size if chunked_prefill_size > 0 else max_prefill_tokens
        graphs += len(prefill_graph_batches(prefill_max_bs)) * 8
    reserved = 512 + activations * 1.5 + tp / 8 * 1024 + graphs
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mib - reserved) / gpu_mib, 3)


def pool_tokens(model: ModelSpec, gpu: GpuSpec, fraction: float, tp: int = 1, page_size: int = 1,
                memory: tuple[float, float] | None = None) -> int:
    """Token pool: (memory x fraction - weights) / KV bytes per token, whole pages
    (mem_cache/kv_cache_configurator.py:2999-3100, model_executor/pool_configurator.py:492-498, 637-647);
    memory: (free before loading the weights, free after), when other engines share the GPU (sim/memory.py)."""
    if memory is not None:
        pre, available = memory
        rest = available - pre * (1 - fraction)
    else:
        rest = gpu.memory_bytes * fraction - model.weight_bytes / tp
    per_token = model.kv_bytes_per_token / tp
    tokens = int(rest // per_token) if rest > 0 else 0
    return tokens - tokens % page_size


def max_running_requests(pool: int, context_length: int, explicit: int | None = None) -> int:
    """int(pool / context x 512) clamped to 2048..4096, then at most pool / 2
    (mem_cache/kv_cache_configurator.py:3119-3132)."""
    if explicit is not None:
        return min(explicit, pool // 2)
    estimate = max(min(int(pool / context_length * 512), 4096), 2048)
    return min(estimate, pool // 2)


def max_req_input_len(context_length: int, pool: int) -> int:
    """min(context - 1, pool - 1) - 5 (managers/tp_worker.py:549-581)."""
    return min(context_length - 1, pool - 1) - 5


@dataclass(frozen=True)
class ServerDefaults:
    """Every setting of one engine that SGLang resolves from the hardware, the mode and the flags."""

    mode: str
    mem_fraction_static: float
    chunked_prefill_size: int
    max_prefill_tokens: int
    cuda_graph_max_bs: int  # decode CUDA graphs: larger decode batches run eagerly (0: no decode graphs)
    page_size: int
    attention_backend: str
    disable_radix_cache: bool
    pool_tokens: int
    max_running_requests: int
    max_req_input_len: int
    context_length: int
    num_reserved_decode_tokens: int


def server_defaults(model: ModelSpec, gpu: GpuSpec, mode: str = "null", tp: int = 1, *,
                    mem_fraction: float | None = None, chunked_prefill_size: int | None = None,
                    page_size: int | None = None, max_running: int | None = None,
                    max_total_tokens: int | None = None, context_length: int | None = None,
                    disable_radix_cache: bool = False, cuda_graph_max_bs: int | None = None,
                    memory: tuple[float, float] | None = None) -> ServerDefaults:
    """SGLang 0.5.23's resolution (arg_groups/pipeline.py order: P/D, CUDA graphs, memory, attention, page)."""
    if mode not in MODES:
        raise ConfigError(f"disaggregation mode {mode!r} is not one of {', '.join(MODES)}")
    gpu_mib = gpu.memory_bytes // MiB
    default_chunk, default_max_bs = memory_tier(gpu_mib, tp)
    chunk = default_chunk if chunked_prefill_size is None else chunked_prefill_size
    max_bs = default_max_bs if cuda_graph_max_bs is None else cuda_graph_max_bs
    if cuda_graph_max_bs is None and max_running is not None:
        max_bs = min(max_bs, max_running)  # memory_hook.py:182-188
    fraction = mem_fraction if mem_fraction is not None else mem_fraction_static(
        gpu_mib, mode, tp=tp, chunked_prefill_size=chunk, decode_max_bs=max_bs, max_running_requests=max_running)
    backend = ATTENTION_BACKEND.get(gpu.arch, "flashinfer")
    page = page_size
    if backend == "trtllm_mha" and page not in (16, 32, 64, 128):
        page = 64  # overrides.py:1174-1187: trtllm_mha needs pages of 16-128 tokens
    page = page or 1  # overrides.py:1341-1363
    pool = pool_tokens(model, gpu, fraction, tp, page, memory)
    if max_total_tokens is not None:
        pool = min(pool, max_total_tokens)
    context = context_length or model.context_length
    return ServerDefaults(
        mode=mode, mem_fraction_static=fraction, chunked_prefill_size=chunk, max_prefill_tokens=MAX_PREFILL_TOKENS,
        cuda_graph_max_bs=0 if mode == "prefill" else max_bs, page_size=page, attention_backend=backend,
        # pd_disaggregation_hook.py:98-127: decode keeps no prefix cache (the prefill side does)
        disable_radix_cache=disable_radix_cache or mode == "decode",
        pool_tokens=pool, max_running_requests=max_running_requests(pool, context, max_running),
        max_req_input_len=max_req_input_len(context, pool), context_length=context,
        num_reserved_decode_tokens=NUM_RESERVED_DECODE_TOKENS,  # applies in decode mode only
    )
