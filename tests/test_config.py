"""The effective configuration: defaults, the options' interplay, the identity --ppd-resume checks."""

import pytest

from pytest_ppd.config import BACKENDS, DEFAULT_BACKEND, build_config, parse_urls
from pytest_ppd.errors import ConfigError


def test_defaults_are_the_virtual_backend_on_the_smoke_grid():
    cfg = build_config({})
    assert cfg.backend == DEFAULT_BACKEND == "virtual" and "default" in cfg.backend_why
    assert cfg.grid_name == "smoke" and cfg.model.name == "Llama-3.1-8B" and cfg.gpu.name == "H100-SXM"
    assert (cfg.reps, cfg.max_reps, cfg.ci) == (3, 10, 0.05)
    assert cfg.transfer_backend in ("mooncake", "mooncake_tcp")
    assert BACKENDS[0] == "virtual"


def test_config_hash_changes_with_the_design_and_only_with_it():
    a = build_config({"grid": "bs=1;L=8;m=1"})
    assert a.config_hash == build_config({"grid": "bs=1;L=8;m=1", "reps": "5"}).config_hash
    assert a.config_hash != build_config({"grid": "bs=2;L=8;m=1"}).config_hash
    assert a.config_hash != build_config({"grid": "bs=1;L=8;m=1", "gpu": "H200"}).config_hash
    assert a.config_hash != build_config({"grid": "bs=1;L=8;m=1", "backend": "sim"}).config_hash


def test_a_prefill_gpu_equal_to_the_gpu_is_no_prefill_gpu():
    assert build_config({"prefill_gpu": "H100-SXM"}).prefill_gpu is None
    assert build_config({"prefill_gpu": "B200"}).prefill_gpu.name == "B200"


def test_urls_name_their_path_or_default_to_remote():
    assert parse_urls("http://h:1") == {"remote": "http://h:1"}
    assert parse_urls("local=http://a:1/, remote=https://b:2") == {"local": "http://a:1", "remote": "https://b:2"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_urls("remote=http://a:1,remote=http://b:2")


@pytest.mark.parametrize("raw,needle", [
    ({"reps": "5", "max_reps": "3"}, "--ppd-max-reps: 3 is below --ppd-reps 5"),
    ({"resume": True}, "--ppd-resume needs --ppd-results"),
    ({"grid": "bs=1;L=131072;m=8"}, "exceed Llama-3.1-8B's context length"),
    ({"transfer_backend": "rdma"}, "--ppd-transfer-backend: transfer backend 'rdma' is not one of"),
    ({"ci": "0"}, "--ppd-ci: 0.0 is out of range"),
    ({"model": "Llama-3.1-70B"}, "--ppd-gpu: Llama-3.1-70B .* leaves no KV pool on one H100-SXM"),
])
def test_conflicts_are_one_error_naming_the_option(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(raw)
