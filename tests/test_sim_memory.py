"""Engines sharing one GPU size their KV pools from the memory the others left free, as SGLang 0.5.23 does."""

import httpx
import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.sglang_defaults import server_defaults
from pytest_ppd.sim.args import resolve
from pytest_ppd.sim.memory import CONTEXT_BYTES, GpuLedger, measure_start
from pytest_ppd.specs import gpu_spec, model_spec

MODEL, GPU = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")
W = MODEL.weight_bytes


def _argv(mode, fraction=None):
    argv = ["--model-path", "Llama-3.1-8B", "--disaggregation-mode", mode]
    return argv + (["--mem-fraction-static", str(fraction)] if fraction else [])


def _finish(ledger, argv, memory):
    """Resolve as the sim's __main__ does, then hold weights + pool + context."""
    cfg = resolve(argv, memory=memory)
    ledger.hold(W + cfg.pool_tokens * MODEL.kv_bytes_per_token + CONTEXT_BYTES, "all")
    return cfg


def test_alone_on_its_gpu_the_pool_is_sglangs_default(tmp_path):
    ledger = GpuLedger(tmp_path, 0, GPU.memory_bytes, owner="a")
    cfg = resolve(_argv("prefill"), memory=measure_start(ledger, W))
    assert cfg.pool_tokens == server_defaults(MODEL, GPU, "prefill").pool_tokens


def test_one_after_the_other_both_get_a_pool(tmp_path):
    """ppd serve --share-gpu: prefill at 0.45, then decode at 0.8 of what prefill left: two similar pools."""
    first = GpuLedger(tmp_path, 0, GPU.memory_bytes, owner="p")
    prefill = _finish(first, _argv("prefill", 0.45), measure_start(first, W))
    second = GpuLedger(tmp_path, 0, GPU.memory_bytes, owner="d")
    decode = _finish(second, _argv("decode", 0.8), measure_start(second, W))
    assert 0.8 < decode.pool_tokens / prefill.pool_tokens < 1.0
    assert second.free_bytes() > 0 and first.held() + second.held() < GPU.memory_bytes


def _together(tmp_path, fractions):
    """Both measure the free GPU before either loads, both load, then each sizes its pool in turn."""
    a, b = (GpuLedger(tmp_path, 0, GPU.memory_bytes, owner=o) for o in "ab")
    pre_a, pre_b = a.free_bytes(), b.free_bytes()
    a.hold(W, "weights")
    b.hold(W, "weights")
    first = _finish(a, _argv("prefill", fractions[0]), (pre_a, a.free_bytes()))
    return first, lambda: resolve(_argv("decode", fractions[1]), memory=(pre_b, b.free_bytes()))


def test_started_together_at_0_4_each_one_pool_comes_out_empty_as_on_the_gpu(tmp_path):
    """The split a user tries first (0.4 + 0.4 < 1): the second engine finds the first's weights and pool gone
    from what is free after loading, against a slack sized from the whole GPU: SGLang's own error."""
    _, second = _together(tmp_path, (0.4, 0.4))
    with pytest.raises(ConfigError, match="Loaded weights leave no GPU memory for the KV cache under "
                                          r"--mem-fraction-static=0\.4.*start one after the other"):
        second()


def test_started_together_at_the_defaults_the_second_pool_is_a_sliver(tmp_path):
    first, second = _together(tmp_path, (None, None))
    assert second().pool_tokens < 0.1 * first.pool_tokens


def test_other_gpus_and_dead_processes_hold_nothing(tmp_path):
    (tmp_path / "gpu0-999999999.json").write_text('{"pid": 999999999, "bytes": 80000000000}')
    GpuLedger(tmp_path, 1, GPU.memory_bytes, owner="x").hold(W, "weights")
    assert GpuLedger(tmp_path, 0, GPU.memory_bytes, owner="y").free_bytes() == GPU.memory_bytes


@pytest.mark.slow
def test_ppd_serve_share_gpu_starts_both_engines_on_one_simulated_gpu(tmp_path):
    from pytest_ppd.servers.topology import TopologyConfig, start_topology

    whole = server_defaults(MODEL, GPU, "decode").pool_tokens
    with start_topology(TopologyConfig(kind="pd", share_gpu=True), tmp_path) as topo:
        pools = [httpx.get(url + "/server_info", trust_env=False).json()["max_total_num_tokens"]
                 for url in (*topo.prefill, *topo.decode)]
        assert len(list((tmp_path / "gpu-ledger").glob("gpu0-*.json"))) == 2
    assert all(0.25 * whole < p < 0.5 * whole for p in pools), pools
    assert list((tmp_path / "gpu-ledger").glob("*.json")) == []  # released on stop
