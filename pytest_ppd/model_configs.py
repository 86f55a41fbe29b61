"""The built-in models: the fields of their published Hugging Face ``config.json`` that the cost model,
the floor and SGLang's pool sizing need (``specs.model_spec`` reads them like any config.json)."""

from __future__ import annotations

from typing import Any

# Fields of the published config.json of each model (Hugging Face hub).
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
        "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    },
    "Llama-3.1-70B": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 131072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
        "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001,
    },
    "Qwen2.5-7B": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
    },
    "Qwen3-8B": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "hidden_act": "silu",
        "bos_token_id": 151643, "eos_token_id": 151645,
    },
    "Mistral-7B": {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
        "max_position_embeddings": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_theta": 1000000.0, "rms_norm_eps": 1e-05,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    },
}

# FP8 variants of the built-in models: SGLang's own FP8 checkpoint format (quant_method "fp8", e4m3, as in
# Qwen/Qwen3-8B-FP8); Llama's published FP8 checkpoints (RedHatAI, nvidia) say the same in compressed-tensors or
# modelopt form, which `_quantization` reads too. The transformer blocks' linear weights are FP8; embeddings,
# lm_head and the KV cache stay bf16.
FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
BUILTIN_CONFIGS.update({f"{name}-FP8": {**cfg, "quantization_config": FP8}
                         for name, cfg in list(BUILTIN_CONFIGS.items())})
