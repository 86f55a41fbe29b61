"""The cost model's kernel physics: tiled attention, launch-bound steps, decode's own weight streaming, FP8."""

from dataclasses import replace

import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.roofline import floor_ms
from pytest_ppd.sim.costmodel import CostModel, CostProfile, Extend, query_rows
from pytest_ppd.specs import gpu_spec, model_spec

MODEL, H100 = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")


@pytest.mark.parametrize("backend,arch,new,rows", [
    ("fa3", "hopper", 1, 32), ("fa3", "hopper", 32, 32), ("fa3", "hopper", 33, 64),  # 128 packed rows / 4 heads
    ("triton", "hopper", 8, 128), ("triton", "hopper", 129, 256), ("triton", "ada", 8, 64),  # one head a tile
    ("flashinfer", "ampere", 2, 4), ("flashinfer", "ampere", 8, 16), ("flashinfer", "ampere", 40, 64),
])
def test_attention_computes_whole_query_tiles(backend, arch, new, rows):
    assert query_rows(MODEL, new, backend, arch) == rows


def test_a_small_append_costs_a_whole_tile_of_attention():
    """On L = 16k cached tokens, appends of 8 and of 128 tokens read the same KV and, on a backend with
    128-row tiles per head (triton), compute the same attention: their steps differ only in the GEMMs."""
    cost = CostModel(MODEL, H100, replace(CostProfile(), launch_prefill_s=0.0), attention_backend="triton")
    untiled = CostModel(MODEL, H100, replace(CostProfile(), launch_prefill_s=0.0, attn_tile_q=1),
                        attention_backend="triton")
    step = {m: cost.extend_time([Extend(m, 16384)]) for m in (8, 128)}
    assert step[8] == pytest.approx(step[128], rel=0.02)
    assert untiled.extend_time([Extend(8, 16384)]) < 0.9 * step[8]


def test_a_small_step_is_bound_by_its_kernel_launches_not_their_sum():
    base = replace(CostProfile(), launch_prefill_s=0.0)
    gpu = CostModel(MODEL, H100, base).extend_time([Extend(32, 1024)]) - base.c0_prefill_s
    slow_host = CostModel(MODEL, H100, replace(base, launch_prefill_s=gpu * 2))
    assert slow_host.extend_time([Extend(32, 1024)]) == pytest.approx(base.c0_prefill_s + gpu * 2)
    fast_host = CostModel(MODEL, H100, replace(base, launch_prefill_s=gpu / 2))
    assert fast_host.extend_time([Extend(32, 1024)]) == pytest.approx(base.c0_prefill_s + gpu)  # hidden


def test_decode_streams_weights_at_its_own_efficiency():
    profile = CostProfile()
    decode = CostModel(MODEL, H100, profile).decode_time([1024])
    assert CostModel(MODEL, H100, replace(profile, eta_w=0.3)).decode_time([1024]) == decode
    assert CostModel(MODEL, H100, replace(profile, eta_w_decode=0.425)).decode_time([1024]) > 1.8 * (
        decode - profile.c0_decode_s)


def test_no_profile_predicts_below_the_floor():
    fastest = CostProfile(name="fastest", c0_prefill_s=0.0, launch_prefill_s=0.0, request_overhead_s=0.0,
                          eta_gemm=0.8, eta_w=0.9, eta_attn=0.8, eta_kv=0.9, attn_tile_q=1)
    for model in (MODEL, model_spec("Llama-3.1-8B-FP8")):
        for bs, L, m in [(1, 1024, 1), (8, 4096, 512), (64, 16384, 8192)]:
            step = CostModel(model, H100, fastest).extend_time([Extend(m, L)] * bs)
            assert step * 1e3 >= floor_ms(model, H100, bs, L, m)


@pytest.mark.parametrize("name", ["Llama-3.1-8B-FP8", "meta-llama/Llama-3.1-8B-Instruct-FP8",
                                  "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8", "Qwen3-8B-FP8"])
def test_fp8_variants_are_built_in(name):
    spec = model_spec(name)
    assert spec.quantization == "fp8" and spec.name.endswith("-FP8")


def test_an_fp8_checkpoint_halves_block_weights_and_runs_gemms_at_the_fp8_peak():
    fp8 = model_spec("Llama-3.1-8B-FP8")
    assert fp8.kv_bytes_per_token == MODEL.kv_bytes_per_token  # the KV cache stays bf16
    assert fp8.step_weight_bytes == MODEL.nonembedding_params + MODEL.lm_head_params * 2
    assert floor_ms(fp8, H100, 1, 1024, 32) < 0.6 * floor_ms(MODEL, H100, 1, 1024, 32)  # weight-bound: bytes
    assert floor_ms(fp8, H100, 64, 0, 256) == pytest.approx(floor_ms(MODEL, H100, 64, 0, 256) / 2, rel=0.05)
    a100 = gpu_spec("A100-80GB")  # no FP8 tensor cores: fewer bytes, bf16 GEMMs
    assert floor_ms(fp8, a100, 64, 0, 8192) == pytest.approx(floor_ms(MODEL, a100, 64, 0, 8192), rel=0.01)
    step = {m.name: CostModel(m, H100).extend_time([Extend(8192, 0)]) for m in (MODEL, fp8)}
    assert step[fp8.name] < 0.65 * step[MODEL.name]


@pytest.mark.parametrize("quant", [
    {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
    {"quant_method": "modelopt", "quant_algo": "FP8"},
    {"quant_method": "compressed-tensors", "config_groups": {"group_0": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}, "targets": ["Linear"]}},
     "ignore": ["lm_head"]},
])
def test_fp8_quantization_configs_are_read(tmp_path, quant):
    import json

    cfg = dict(model_spec("Llama-3.1-8B").config or {}, quantization_config=quant)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert model_spec(tmp_path).quantization == "fp8"


def test_an_unmodelled_quantization_is_one_clear_error(tmp_path):
    import json

    cfg = dict(model_spec("Llama-3.1-8B").config or {}, quantization_config={"quant_method": "awq", "bits": 4})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="quantization 'awq' is not modelled.*FP8"):
        model_spec(tmp_path)
