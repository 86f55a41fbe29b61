"""--sim-profile aic:SYSTEM:BACKEND: the sim's GPU time from AIConfigurator's measured per-operator tables."""

import sys
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ppd.errors import ConfigError
from pytest_ppd.roofline import floor_ms
from pytest_ppd.sim.aiccost import FLOOR, INSTALL, SYSTEMS, AicCostModel, attention_shape, parse_spec, system_for
from pytest_ppd.sim.costmodel import CostModel, Extend
from pytest_ppd.specs import gpu_spec, known_gpus, model_spec
from pytest_ppd.sim.args import engine_for, profile_for, resolve

MODEL, H100 = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")
NEEDS_AIC = "aiconfigurator-core is the optional [aic] extra: pip install 'pytest-ppd[aic]'"


@pytest.mark.parametrize("text,expected", [
    ("aic:", ("auto", "sglang")), ("aic:auto", ("auto", "sglang")),
    ("aic:h100_sxm:sglang", ("h100_sxm", "sglang")), ("aic::vllm", ("auto", "vllm")),
    ("aic:h200_sxm:sglang@next", ("h200_sxm", "sglang@next")),
    ("aic:auto:trtllm@1.3.0rc20", ("auto", "trtllm@1.3.0rc20")),
])
def test_the_spec_string_defaults_to_the_gpus_system_and_sglangs_current_tables(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text,names", [
    ("aic:h100_sxm:sglang:0.5.14", "aic:[SYSTEM[:BACKEND[@VERSION]]]"), ("aic", "aic:[SYSTEM"), ("aicx", "aic:[SYSTEM"),
    ("dynamo:/tmp/x", "aic:[SYSTEM"), ("aic:h999", "h100_sxm (--sim-gpu H100-SXM)"),
    ("aic:auto:tensorrt", "sglang, vllm, trtllm"), ("aic:auto:sglang@", "sglang, vllm, trtllm"),
])
def test_a_bad_spec_string_is_one_config_error_naming_what_is_accepted(text, names):
    with pytest.raises(ConfigError, match="--sim-profile") as info:
        parse_spec(text)
    assert names in str(info.value)


def test_every_built_in_gpu_has_a_system_and_another_gpus_system_is_refused():
    assert sorted(SYSTEMS) == known_gpus()
    assert {system_for(gpu_spec(g)) for g in known_gpus()} == set(SYSTEMS.values())
    assert system_for(H100, "h100_sxm") == "h100_sxm"
    with pytest.raises(ConfigError, match="another GPU than --sim-gpu H100-SXM.*H200=h200_sxm"):
        system_for(H100, "h200_sxm")


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    """Whether or not aiconfigurator-core is installed, its absence is one ConfigError naming the install."""
    monkeypatch.setitem(sys.modules, "aiconfigurator_core", None)
    with pytest.raises(ConfigError) as info:
        AicCostModel(MODEL, H100)
    assert INSTALL in str(info.value) and "aiconfigurator-core" in str(info.value)


def test_a_uniform_batch_is_looked_up_as_itself():
    assert attention_shape([Extend(512, 3584)] * 8) == (8, 512, 3584)
    assert attention_shape([]) == (0, 0, 0)


@given(st.lists(st.tuples(st.integers(1, 8192), st.integers(0, 65536)), min_size=1, max_size=64))
def test_a_mixed_batch_keeps_its_causal_attention_work(pairs):
    """n chunks of mean length s after the equivalent prefix p do the batch's sum of new x (prefix + new/2),
    up to rounding: s and p are whole tokens, so the shape may be off by n x (p + s) / 2 (e.g. chunks of 1 and
    2 tokens are looked up as 2 of 2)."""
    n, s, p = attention_shape([Extend(new, prefix) for new, prefix in pairs])
    work = sum(new * (prefix + new / 2) for new, prefix in pairs)
    assert n == len(pairs) and s == max(round(sum(new for new, _ in pairs) / n), 1) and p >= 0
    assert n * s * (p + s / 2) == pytest.approx(work, rel=0.01, abs=n * (p + s))


# --- against the real tables: skipped without the [aic] extra ---

@pytest.fixture(scope="module")
def aic():
    pytest.importorskip("aiconfigurator_core", reason=NEEDS_AIC)
    return AicCostModel(MODEL, H100, "auto", "sglang")


def test_it_names_the_tables_it_reads(aic):
    assert aic.describe() == {"source": "aiconfigurator", "system": "h100_sxm", "backend": "sglang",
                              "version": aic.version}
    assert aic.version[0].isdigit()  # the literal data version, not the 'current' alias


def test_prefill_grows_with_the_prompt_and_the_batch(aic):
    by_isl = [aic.extend_time([Extend(isl, 0)]) for isl in (128, 512, 2048, 8192)]
    by_batch = [aic.extend_time([Extend(1024, 0)] * bs) for bs in (1, 2, 4, 8)]
    assert by_isl == sorted(by_isl) and len(set(by_isl)) == 4
    assert by_batch == sorted(by_batch) and by_batch[-1] > 6 * by_batch[0]


def test_a_cached_prefix_makes_an_append_cheaper_than_a_cold_prefill_of_the_same_length(aic):
    append, cold = aic.extend_time([Extend(512, 3584)]), aic.extend_time([Extend(4096, 0)])
    assert append < 0.3 * cold
    assert append > aic.extend_time([Extend(512, 0)])  # the prefix is attended to: it costs something


def test_a_prefix_never_makes_a_short_append_cheaper(aic):
    """AIConfigurator scales a cold prefill by (full^2 - prefix^2) / full^2, which would price 8 tokens after
    16k cached below 8 cold ones; the step keeps the cold attention as its least."""
    assert aic.attention_ms(1, 8, 16384) < aic.attention_ms(1, 8, 0)  # the table's own answer
    steps = [aic.extend_time([Extend(8, L)]) for L in (0, 1024, 16384, 65536)]
    assert steps == sorted(steps)


def test_a_uniform_batch_costs_what_aiconfigurator_predicts_for_it(aic):
    """L(n s) + A(n, s, p) is AIConfigurator's own prefill of n requests of s + p tokens, p cached."""
    for n, s, p in [(1, 1024, 0), (4, 1024, 0), (8, 512, 256), (16, 64, 8000)]:
        ours = aic.linear_ms(n * s) + aic.attention_ms(n, s, p)
        assert ours == pytest.approx(aic._engine.predict_prefill_latency(n, s + p, p), rel=1e-3)


def test_decode_grows_with_the_batch_and_the_context(aic):
    by_batch = [aic.decode_time([2048] * bs) for bs in (1, 8, 64, 256)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
    assert aic.decode_time([16384] * 64) > aic.decode_time([1024] * 64)
    assert aic.decode_time([1024] * 64, eager=True) > aic.decode_time([1024] * 64)


def test_no_step_is_faster_than_the_roofline_floor(aic):
    for bs, L, m in [(1, 0, 1), (1, 1024, 1), (8, 4096, 512), (64, 16384, 8192)]:
        assert aic.extend_time([Extend(m, L)] * bs) * 1e3 >= floor_ms(MODEL, H100, bs, L, m)
    free = AicCostModel(MODEL, H100, profile=FLOOR)
    free.linear_ms = free.attention_ms = free.decode_ms = lambda *shape: 0.0  # tables that claim no time at all
    floor = CostModel(MODEL, H100, FLOOR)
    assert free.extend_time([Extend(512, 3584)]) == floor.extend_time([Extend(512, 3584)]) > 0
    assert free.decode_time([4096] * 32) == floor.decode_time([4096] * 32) > 0


def test_fp8_gemms_are_faster_than_bf16_where_the_system_has_fp8_tables(aic):
    fp8 = AicCostModel(model_spec("Llama-3.1-8B-FP8"), H100)
    assert fp8.extend_time([Extend(8192, 0)]) < 0.8 * aic.extend_time([Extend(8192, 0)])
    assert fp8.decode_time([1024] * 8) < 0.9 * aic.decode_time([1024] * 8)


def test_more_tensor_parallel_ranks_time_a_shorter_step(aic):
    big = model_spec("Llama-3.1-70B")
    tp2, tp8 = (AicCostModel(big, H100, tp_size=tp) for tp in (2, 8))
    assert tp8.extend_time([Extend(4096, 0)]) < 0.5 * tp2.extend_time([Extend(4096, 0)])


def test_a_mistral_without_a_sliding_window_is_timed_as_the_llama_it_is(aic):
    assert AicCostModel(model_spec("Mistral-7B"), H100).extend_time([Extend(1024, 0)]) > 0


@pytest.mark.parametrize("gpu,name,arch,backend,names", [
    ("H100-PCIe", "Llama-3.1-8B", "", "sglang", "no sglang tables for h100_pcie (none of any backend); sglang "
                                                 "tables exist for: a100_sxm, b200_sxm, h100_sxm, h200_sxm, l40s"),
    ("H100-SXM", "Llama-3.1-8B", "", "sglang@9.9", "valid: current="),
    ("A100-80GB", "Llama-3.1-8B-FP8", "", "sglang", "fp8"),  # no FP8 tensor cores, no FP8 tables
    ("H100-SXM", "Llama-3.1-8B", "FooForCausalLM", "sglang", "LlamaForCausalLM"),
])
def test_what_aiconfigurator_cannot_time_is_one_config_error_listing_what_it_can(aic, gpu, name, arch, backend,
                                                                                  names):
    model = model_spec(name)
    if arch:
        model = replace(model, config={**(model.config or {}), "architectures": [arch]})
    with pytest.raises(ConfigError, match="--sim-profile aic:") as info:
        AicCostModel(model, gpu_spec(gpu), backend=backend)
    assert names in str(info.value)


def test_a_bad_aic_spec_fails_when_the_flags_are_parsed():
    """Spec and GPU are checked by resolve(), before anything loads (and without the package)."""
    with pytest.raises(ConfigError, match="another GPU than --sim-gpu H100-SXM"):
        resolve(["--model", "Llama-3.1-8B", "--sim-profile", "aic:h200_sxm:sglang"])


def test_the_sim_profile_flag_times_the_engine_with_aiconfigurator(aic):
    cfg = resolve(["--model", "Llama-3.1-8B", "--sim-gpu", "H200", "--sim-profile", "aic:auto:sglang",
                   "--sim-slowdown", "1.5"])
    engine = engine_for(cfg, profile_for(cfg.args))
    assert isinstance(engine.cost, AicCostModel) and engine.cost.system == "h200_sxm"
    assert engine.cost.profile.slowdown == 1.5
