"""Specs derive sizes from configs and reject unknown names with the known ones."""

import json

import pytest

from pytest_ppd.errors import ConfigError, UnknownNameError
from pytest_ppd.specs import gpu_spec, known_gpus, known_models, link_spec, model_spec


def test_llama_8b_kv_bytes_per_token_is_128_kib():
    """2 x 32 layers x 8 kv heads x 128 head_dim x 2 bytes = 131072 B."""
    assert model_spec("Llama-3.1-8B").kv_bytes_per_token == 131072


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b", "Llama-3.1-8B"])
def test_hf_ids_and_instruct_names_resolve(name):
    assert model_spec(name).name == "Llama-3.1-8B"


def test_llama_8b_nonembedding_params_near_7b():
    n = model_spec("Llama-3.1-8B").nonembedding_params
    assert 6.9e9 < n < 7.1e9


@pytest.mark.parametrize("name,kv", [("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2), ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2),
                                     ("Qwen3-8B", 2 * 36 * 8 * 128 * 2), ("Mistral-7B", 2 * 32 * 8 * 128 * 2)])
def test_builtin_models_kv_sizes(name, kv):
    assert model_spec(name).kv_bytes_per_token == kv


def test_config_json_path_is_read_not_hardcoded(tmp_path):
    """A custom config with 4 kv heads and fp8 KV halves and quarters the size."""
    cfg = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000,
           "max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = model_spec(tmp_path)
    assert spec.kv_bytes_per_token == 2 * 16 * 4 * 128 * 2
    assert model_spec(tmp_path / "config.json", kv_dtype_bytes=1).kv_bytes_per_token == 2 * 16 * 4 * 128


def test_broken_config_names_the_missing_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 10}))
    with pytest.raises(ConfigError, match="num_hidden_layers|intermediate_size"):
        model_spec(tmp_path)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        model_spec("gpt-5")
    for name in known_models():
        assert name in str(info.value)


def test_unknown_gpu_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        gpu_spec("TPU-v5")
    assert all(g in str(info.value) for g in known_gpus())


@pytest.mark.parametrize("name", ["H100-SXM", "H100-PCIe", "H200", "A100-80GB", "B200", "L40S"])
def test_gpus_have_positive_peaks(name):
    g = gpu_spec(name)
    assert g.peak_flops > 1e14 and g.hbm_bytes_per_s > 5e11 and g.memory_bytes > 40e9


def test_h100_alias_and_peaks():
    g = gpu_spec("h100")
    assert g.name == "H100-SXM" and g.peak_flops == 989e12 and g.hbm_bytes_per_s == 3.35e12


def test_link_transfer_time_is_bytes_over_bandwidth_plus_latency():
    ib = link_spec("ib-ndr")
    assert ib.transfer_s(50e9) == pytest.approx(1.0 + ib.latency_s)
    with pytest.raises(UnknownNameError, match="nvlink"):
        link_spec("carrier-pigeon")
