"""Model, GPU and link specifications.

Every size is derived from a Hugging Face ``config.json`` (the built-in models
are stored as the relevant fields of their published configs), never
hard-coded::

    >>> model_spec("Llama-3.1-8B").kv_bytes_per_token
    131072
    >>> gpu_spec("H100-SXM").peak_flops
    989000000000000.0
"""

from __future__ import annotations

from functools import cached_property

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pytest_ppd.errors import ConfigError, UnknownNameError
from pytest_ppd.model_configs import BUILTIN_CONFIGS as _BUILTIN_CONFIGS

MiB = 1 << 20

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1, "float8_e4m3fn": 1}


def _quantization(name: str, cfg: Mapping[str, Any]) -> str:
    """'fp8' when the checkpoint's linear weights are FP8 (e4m3), '' when unquantized."""
    q = cfg.get("quantization_config")
    if not q:
        return ""
    method = str(q.get("quant_method", "")).lower() if isinstance(q, dict) else ""
    if method in ("fp8", "fbgemm_fp8", "w8a8_fp8"):
        return "fp8"
    if method == "modelopt" and "fp8" in str(q.get("quant_algo", "")).lower():
        return "fp8"
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values() if isinstance(g, dict)]
        if weights and all(w.get("num_bits") == 8 and w.get("type") == "float" for w in weights):
            return "fp8"
    raise ConfigError(f"model config for {name!r}: quantization {method or q!r} is not modelled; the cost model "
                      "knows FP8 weights (quant_method fp8, compressed-tensors float8, modelopt FP8): use an "
                      "FP8 or an unquantized checkpoint's config.json")


def _canonical(name: str) -> str:
    """'meta-llama/Llama-3.1-8B-Instruct' -> 'llama-3.1-8b' (lookup key)."""
    base = name.strip().rstrip("/").split("/")[-1].lower()
    base = re.sub(r"^meta-(?=llama)", "", base)
    base = re.sub(r"-(instruct|chat|base|hf)(?=-fp8$|$)", "", base)
    base = re.sub(r"-v0\.\d+$", "", base)
    return base.replace("_", "-")


# The one table of defaults: every option, command and server that needs a model, a GPU or a link
# without being told takes it from here.
DEFAULT_MODEL = "Llama-3.1-8B"
DEFAULT_GPU = "H100-SXM"
DEFAULT_LINK = "ib-ndr"

@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts the cost model and the floor need."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    dtype_bytes: int = 2
    kv_dtype_bytes: int = 2
    config: Mapping[str, Any] | None = None
    quantization: str = ""  # "fp8": the blocks' linear weights are FP8 (1 byte, GEMMs at the FP8 peak)

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @cached_property
    def nonembedding_params(self) -> int:
        """Parameters of the transformer blocks (attention, gated MLP, norms), without embeddings/lm_head."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        return self.num_layers * per_layer + h

    @cached_property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def block_weight_bytes_per_param(self) -> int:
        """Bytes per parameter of the transformer blocks: 1 for an FP8 checkpoint."""
        return 1 if self.quantization == "fp8" else self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights held on the GPU (blocks, embedding, lm_head unless tied)."""
        tied = bool((self.config or {}).get("tie_word_embeddings", False))
        embeddings = self.lm_head_params * (1 if tied else 2) * self.dtype_bytes
        return self.nonembedding_params * self.block_weight_bytes_per_param + embeddings

    @cached_property
    def step_weight_bytes(self) -> int:
        """Weight bytes one forward pass must read: the blocks plus the lm_head."""
        return self.nonembedding_params * self.block_weight_bytes_per_param + self.lm_head_params * self.dtype_bytes

    def to_config(self) -> dict[str, Any]:
        """A config.json that describes this model (what SGLang's dummy loader needs)."""
        cfg = dict(self.config or {})
        cfg.setdefault("head_dim", self.head_dim)
        return cfg


def _from_config(name: str, cfg: Mapping[str, Any], kv_dtype_bytes: int | None) -> ModelSpec:
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        spec = ModelSpec(
            name=name,
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            context_length=int(cfg.get("max_position_embeddings") or 0),
            dtype_bytes=_DTYPE_BYTES.get(str(cfg.get("torch_dtype", "bfloat16")), 2),
            kv_dtype_bytes=kv_dtype_bytes or 2,
            config=dict(cfg),
            quantization=_quantization(name, cfg),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"model config for {name!r} lacks or mistypes {exc}; a decoder-only HF config.json "
            "needs hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size"
        ) from None
    if min(spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim,
           spec.intermediate_size, spec.vocab_size, spec.context_length) <= 0:
        raise ConfigError(f"model config for {name!r} has a non-positive size: {spec}")
    return spec


def known_models() -> list[str]:
    return sorted(_BUILTIN_CONFIGS)


def model_spec(name_or_path: str | Path | ModelSpec, *, kv_dtype_bytes: int | None = None) -> ModelSpec:
    """A ModelSpec from a built-in name (HF ids and -Instruct accepted), a model directory or a config.json path."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read model config {path}: {exc}; pass a valid HF config.json") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"model config {path} is not a JSON object; pass a valid HF config.json")
        if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers
            cfg = {**cfg, **cfg["text_config"]}
        return _from_config(cfg.get("_name_or_path") or path.parent.name, cfg, kv_dtype_bytes)
    key = _canonical(text)
    for builtin, cfg in _BUILTIN_CONFIGS.items():
        if _canonical(builtin) == key:
            return _from_config(builtin, cfg, kv_dtype_bytes)
    raise UnknownNameError(
        f"unknown model {text!r}; known: {', '.join(known_models())}, or a path to a HF config.json"
    )


@dataclass(frozen=True)
class GpuSpec:
    """Peak dense bf16 (and FP8) compute, HBM bandwidth and memory of one GPU."""

    name: str
    peak_flops: float
    hbm_bytes_per_s: float
    memory_bytes: int
    arch: str = ""  # hopper, blackwell, ampere, ada: SGLang picks its attention backend by it
    peak_fp8_flops: float = 0.0  # dense FP8 tensor-core peak; 0: none (FP8 weights are upcast, bf16 GEMMs)


# Vendor datasheets: dense (no sparsity) bf16 and FP8 tensor-core peaks; memory as nvidia-smi reports it.
# A100 has no FP8 tensor cores (SGLang runs FP8 checkpoints there as weight-only, W8A16 Marlin).
_GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("H100-SXM", 989e12, 3.35e12, 81559 * MiB, "hopper", 1979e12),
        GpuSpec("H100-PCIe", 756e12, 2.0e12, 81559 * MiB, "hopper", 1513e12),
        GpuSpec("H200", 989e12, 4.8e12, 143771 * MiB, "hopper", 1979e12),
        GpuSpec("A100-80GB", 312e12, 2.039e12, 81920 * MiB, "ampere"),
        GpuSpec("B200", 2250e12, 8.0e12, 183359 * MiB, "blackwell", 4500e12),
        GpuSpec("L40S", 362e12, 864e9, 46068 * MiB, "ada", 733e12),
    )
}
_GPU_ALIASES = {"h100": "H100-SXM", "h100-sxm5": "H100-SXM", "h100-80gb": "H100-SXM",
                "a100": "A100-80GB", "a100-sxm": "A100-80GB", "h200-sxm": "H200"}


def known_gpus() -> list[str]:
    return sorted(_GPUS)


def gpu_spec(name: str | GpuSpec) -> GpuSpec:
    """A GpuSpec by name (case-insensitive; 'H100' means H100-SXM)."""
    if isinstance(name, GpuSpec):
        return name
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = _GPU_ALIASES.get(key, key)
    for gpu in _GPUS.values():
        if gpu.name.lower() == key.lower():
            return gpu
    raise UnknownNameError(f"unknown GPU {name!r}; known: {', '.join(known_gpus())}")


@dataclass(frozen=True)
class LinkSpec:
    """A KV-transfer link between prefill and decode: one direction's bandwidth and latency."""

    name: str
    bytes_per_s: float
    latency_s: float

    def transfer_s(self, nbytes: float) -> float:
        """Transfer time = bytes / bandwidth + latency."""
        return nbytes / self.bytes_per_s + self.latency_s


_LINKS: dict[str, LinkSpec] = {
    lk.name: lk
    for lk in (
        LinkSpec("nvlink", 450e9, 5e-6),  # NVLink 4 (H100): 900 GB/s both ways
        LinkSpec("pcie5", 64e9, 10e-6),  # PCIe 5.0 x16, one direction
        LinkSpec("ib-ndr", 50e9, 10e-6),  # InfiniBand NDR, 400 Gb/s per port
        LinkSpec("roce-400g", 50e9, 20e-6),  # RoCE v2 on 400 GbE
    )
}


def known_links() -> list[str]:
    return sorted(_LINKS)


def link_spec(name: str | LinkSpec) -> LinkSpec:
    """A LinkSpec by name: nvlink, pcie5, ib-ndr, roce-400g."""
    if isinstance(name, LinkSpec):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = {"infiniband": "ib-ndr", "ib": "ib-ndr", "roce": "roce-400g", "pcie": "pcie5"}.get(key, key)
    if key in _LINKS:
        return _LINKS[key]
    raise UnknownNameError(f"unknown link {name!r}; known: {', '.join(known_links())}")
