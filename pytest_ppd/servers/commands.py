"""Exact command lines of every process a topology starts.

One builder serves both backends: the sim accepts SGLang's launch_server flags
(plus --sim-*), so the argv for ``--backend sglang`` is the sim's with another
module name and without the --sim-* part. SGLang 0.5.23's own ServerArgs parser
accepts the sglang argv unchanged (tests/test_sglang_argv.py checks it where an
SGLang CPU venv is named by PPD_SGLANG_PYTHON).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ppd.errors import ConfigError
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_LINK

BACKEND_MODULES = {"sim": "pytest_ppd.sim", "sglang": "sglang.launch_server"}
# SGLang 0.5.23's --disaggregation-transfer-backend choices (srt/arg_groups/choices.py), plus "auto".
TRANSFER_BACKENDS = ("auto", "mooncake", "mooncake_tcp", "nixl", "ascend", "fake", "mori")
INFINIBAND_SYSFS = Path("/sys/class/infiniband")


def resolve_transfer_backend(name: str, sysfs: Path = INFINIBAND_SYSFS) -> str:
    """"auto": mooncake over RDMA where this node has an RDMA device, else mooncake_tcp (mooncake's TCP
    transport: without RDMA, plain mooncake falls back, switches transport or fails memory registration
    depending on its build; SGLang issues #6193, #8324)."""
    if name not in TRANSFER_BACKENDS:
        raise ConfigError(f"transfer backend '{name}' is not one of {', '.join(TRANSFER_BACKENDS)}")
    if name != "auto":
        return name
    try:
        has_rdma = sysfs.is_dir() and any(sysfs.iterdir())
    except OSError:
        has_rdma = False
    return "mooncake" if has_rdma else "mooncake_tcp"
ROUTER_MODULE = "sglang_router.launch_router"


@dataclass(frozen=True)
class EngineLaunch:
    """One engine (prefill, decode or colocated) to start."""

    role: str  # "prefill" | "decode" | "colocated"
    port: int
    bootstrap_port: int | None = None
    base_gpu_id: int = 0
    mem_fraction_static: float | None = None


@dataclass(frozen=True)
class LaunchSpec:
    """What to start: backend, model directory, hardware and common engine flags."""

    backend: str
    model_path: Path
    host: str = "127.0.0.1"
    tp_size: int = 1
    load_format: str = "dummy"
    transfer_backend: str = "mooncake_tcp"  # resolved (never "auto") by the time an argv is built
    context_length: int | None = None
    chunked_prefill_size: int | None = None
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    page_size: int | None = None
    api_key: str | None = None
    sim_gpu: str = DEFAULT_GPU
    sim_prefill_gpu: str | None = None  # the prefill engine's GPU, when it differs (heterogeneous P/D)
    sim_link: str = DEFAULT_LINK
    sim_flags: tuple[str, ...] = ()
    extra_engine_args: tuple[str, ...] = field(default_factory=tuple)
    # Text mode (`ppd serve`): engines tokenize (this HF tokenizer, else the model's or the sim's stand-in) and
    # report cached tokens in OpenAI usage; off, they take input_ids only (--skip-tokenizer-init), as the grid does.
    text: bool = False
    tokenizer_path: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_MODULES:
            raise ConfigError(f"{self.backend!r} is not a launchable backend; valid: {', '.join(BACKEND_MODULES)}")


def engine_argv(spec: LaunchSpec, eng: EngineLaunch) -> list[str]:
    """python -m <sglang.launch_server | pytest_ppd.sim> with SGLang's flags."""
    text = ["--enable-cache-report"] + (["--tokenizer-path", str(spec.tokenizer_path)] if spec.tokenizer_path else [])
    argv = [sys.executable, "-m", BACKEND_MODULES[spec.backend],
            "--model-path", str(spec.model_path), "--host", spec.host, "--port", str(eng.port),
            "--tp-size", str(spec.tp_size), "--base-gpu-id", str(eng.base_gpu_id),
            "--load-format", spec.load_format, *(text if spec.text else ["--skip-tokenizer-init"]), "--enable-metrics"]
    if eng.role in ("prefill", "decode"):
        argv += ["--disaggregation-mode", eng.role,
                 "--disaggregation-transfer-backend", spec.transfer_backend]
        if eng.role == "prefill":
            argv += ["--disaggregation-bootstrap-port", str(eng.bootstrap_port)]
    optional = {
        "--mem-fraction-static": eng.mem_fraction_static,
        "--context-length": spec.context_length,
        "--chunked-prefill-size": spec.chunked_prefill_size,
        "--max-running-requests": spec.max_running_requests,
        "--max-total-tokens": spec.max_total_tokens,
        "--page-size": spec.page_size,
        "--api-key": spec.api_key,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    argv += list(spec.extra_engine_args)
    if spec.backend == "sim":
        gpu = spec.sim_prefill_gpu if eng.role == "prefill" and spec.sim_prefill_gpu else spec.sim_gpu
        argv += ["--sim-gpu", gpu, "--sim-link", spec.sim_link, *spec.sim_flags]
    return argv


def router_argv(spec: LaunchSpec, port: int, prefill: list[tuple[str, int]], decode: list[str],
                prometheus_port: int) -> list[str]:
    """The real sglang-router in P/D mode, bound to loopback, with retries off.

    A retried append would find its context *and* its append cached and fake a
    fast round, so measurements run with --disable-retries; the circuit
    breaker (10 failures open it for 60 s, even once workers are healthy again)
    would turn one injected fault into a minute of failed rounds, so it is off.
    """
    argv = [sys.executable, "-m", ROUTER_MODULE, "--pd-disaggregation"]
    for url, boot in prefill:
        argv += ["--prefill", url, str(boot)]
    for url in decode:
        argv += ["--decode", url]
    argv += ["--host", spec.host, "--port", str(port), "--policy", "round_robin",
             "--disable-retries", "--disable-circuit-breaker",
             # SGLang's /health runs a generate request; /ready does not. An hour between checks keeps
             # them out of the measured rounds (the session watches the processes itself).
             "--health-check-endpoint", "/ready", "--health-check-interval-secs", "3600",
             "--prometheus-host", spec.host, "--prometheus-port", str(prometheus_port),
             "--log-level", "warn"]
    if spec.api_key:
        argv += ["--api-key", spec.api_key]
    return argv


def mask_secrets(argv: list[str]) -> list[str]:
    """argv with the value after --api-key replaced (what records and logs keep)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--api-key":
            out[i + 1] = "***"
    return out
