"""Topologies: colocated (the LOCAL path) and pd (REMOTE path through the real router).

    with start_topology(TopologyConfig(backend="sim", kind="pd")) as topo:
        topo.entry_url     # the router
        topo.urls()        # {"router": ..., "prefill": [...], "decode": [...], "colocated": None}

Engines start in parallel, the router once they are healthy; everything stops
in reverse order on exit, whatever the exit.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from pytest_ppd.errors import ConfigError, ServerLaunchError
from pytest_ppd.servers.commands import (EngineLaunch, LaunchSpec, engine_argv, resolve_transfer_backend,
                                         router_argv)
from pytest_ppd.servers.process import ServerProcess, free_port, port_is_free
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_LINK, DEFAULT_MODEL, gpu_spec, link_spec, model_spec

TOPOLOGIES = ("pd", "colocated")
STARTUP_TIMEOUT_S = {"sim": 60.0, "sglang": 1800.0}
SHARED_PREFILL_FRACTION, SHARED_DECODE_FRACTION = 0.45, 0.8
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class TopologyConfig:
    """Everything `ppd serve` and the fixtures need to start one topology."""

    backend: str = "sim"
    kind: str = "pd"
    host: str = "127.0.0.1"
    port: int | None = None  # entry port (router or colocated engine); None = any free port
    model: str = DEFAULT_MODEL
    gpu: str = DEFAULT_GPU
    link: str = DEFAULT_LINK
    tp_size: int = 1
    share_gpu: bool = False  # pd on one GPU: split --mem-fraction-static, start one after the other
    transfer_backend: str = "auto"  # mooncake with an RDMA device, else mooncake_tcp (commands.py)
    api_key: str | None = None
    workdir: Path | None = None
    sim_flags: tuple[str, ...] = ()
    engine_args: tuple[str, ...] = ()
    max_total_tokens: int | None = None
    context_length: int | None = None
    prefill_gpu: str | None = None  # sim: the prefill engine's GPU when it differs from gpu
    text: bool = False  # `ppd serve`: engines answer text and OpenAI requests (commands.LaunchSpec.text)
    tokenizer: str | None = None  # text mode: a Hugging Face tokenizer directory

    def validate(self) -> None:
        if self.backend not in ("sim", "sglang"):
            raise ConfigError(f"'{self.backend}' is not a backend that launches servers; valid: sim, sglang")
        if self.kind not in TOPOLOGIES:
            raise ConfigError(f"'{self.kind}' is not a topology; valid: {', '.join(TOPOLOGIES)}")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range; use 1-65535")
        model_spec(self.model)
        gpu_spec(self.gpu)
        if self.prefill_gpu is not None:
            gpu_spec(self.prefill_gpu)
            if self.backend != "sim":
                raise ConfigError("a different prefill GPU is a sim setting; SGLang runs on the GPUs it finds")
        link_spec(self.link)
        resolve_transfer_backend(self.transfer_backend)
        if self.tokenizer is not None and not Path(self.tokenizer).expanduser().is_dir():
            raise ConfigError(f"--tokenizer {self.tokenizer}: no such directory; "
                              "give a Hugging Face tokenizer directory")

    def check_installed(self) -> None:
        """What launching (not planning) needs installed."""
        if not _module_available("sglang_router") and self.kind == "pd":
            raise ConfigError("sglang-router is not installed; pip install sglang-router==0.3.2")
        if self.backend == "sglang" and not _module_available("sglang"):
            raise ConfigError("SGLang is not installed here; on a GPU node: pip install 'pytest-ppd[sglang]'")
        if self.backend == "sim" and self.tokenizer and not (_module_available("tokenizers")
                                                             or _module_available("transformers")):
            raise ConfigError("--tokenizer needs the tokenizers (or transformers) package; pip install tokenizers")
        backend = resolve_transfer_backend(self.transfer_backend)
        if self.backend == "sglang" and self.kind == "pd" and backend.startswith("mooncake") \
                and not _module_available("mooncake"):
            raise ConfigError("P/D with the mooncake transfer backend needs mooncake-transfer-engine, which SGLang "
                              "does not install; pip install 'pytest-ppd[sglang]' (or mooncake-transfer-engine)")


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def materialize_model(model: str, workdir: Path) -> tuple[Path, str]:
    """A local model directory for --model-path, and the load format it allows.

    A built-in name becomes a directory holding its config.json, which both the
    sim and SGLang's dummy loader read (and the router wants a local path).
    """
    path = Path(model).expanduser()
    if path.is_file():
        path = path.parent
    if path.is_dir():
        has_weights = any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir())
        return path.resolve(), "auto" if has_weights else "dummy"
    spec = model_spec(model)
    target = workdir / "models" / spec.name
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(spec.to_config(), indent=2) + "\n")
    return target.resolve(), "dummy"


@dataclass
class Topology:
    """A running topology: its processes and URLs."""

    config: TopologyConfig
    processes: list[ServerProcess] = field(default_factory=list)
    router: str | None = None
    prefill: list[str] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)
    colocated: str | None = None

    @property
    def entry_url(self) -> str:
        url = self.router or self.colocated
        assert url is not None
        return url

    def urls(self) -> dict[str, object]:
        return {"router": self.router, "prefill": self.prefill, "decode": self.decode,
                "colocated": self.colocated}

    def argvs(self) -> list[list[str]]:
        return [p.argv for p in self.processes]

    def dead(self) -> list[ServerProcess]:
        return [p for p in self.processes if not p.alive]

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def _take_port(host: str, wanted: int | None, what: str) -> int:
    if wanted is None:
        return free_port(host)
    if not port_is_free(host, wanted):
        raise ConfigError(f"port {wanted} on {host} is in use ({what}); stop what holds it or pick another --port")
    return wanted


def plan(cfg: TopologyConfig, workdir: Path) -> Topology:
    """Decide ports and argv of every process, without starting anything (--dry-run)."""
    cfg.validate()
    model_path, load_format = materialize_model(cfg.model, workdir)
    spec = LaunchSpec(
        backend=cfg.backend, model_path=model_path, host=cfg.host, tp_size=cfg.tp_size,
        load_format=load_format, transfer_backend=resolve_transfer_backend(cfg.transfer_backend),
        api_key=cfg.api_key,
        sim_gpu=gpu_spec(cfg.gpu).name, sim_link=link_spec(cfg.link).name, sim_flags=cfg.sim_flags,
        sim_prefill_gpu=gpu_spec(cfg.prefill_gpu).name if cfg.prefill_gpu else None,
        extra_engine_args=cfg.engine_args, max_total_tokens=cfg.max_total_tokens,
        context_length=cfg.context_length,
        # SGLang itself needs a tokenizer for text: a built-in model (config.json only) stays on input_ids.
        text=cfg.text and (cfg.backend == "sim" or cfg.tokenizer is not None
                           or any((model_path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))),
        tokenizer_path=Path(cfg.tokenizer).expanduser().resolve() if cfg.tokenizer else None,
    )
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    logs = workdir / "logs"
    topo = Topology(cfg)

    def proc(name: str, argv: list[str], health: str) -> ServerProcess:
        return ServerProcess(name, argv, health_url=health, log_path=logs / f"{name}.log", headers=headers)

    if cfg.kind == "colocated":
        port = _take_port(cfg.host, cfg.port, "colocated engine")
        topo.colocated = _url(cfg.host, port)
        topo.processes.append(proc("colocated", engine_argv(spec, EngineLaunch("colocated", port)),
                                   topo.colocated + "/ready"))
        return topo
    entry = _take_port(cfg.host, cfg.port, "router")
    p_port, d_port, boot, prom = (free_port(cfg.host) for _ in range(4))
    shared = cfg.share_gpu and cfg.backend in ("sglang", "sim")
    if shared and cfg.backend == "sim":  # the sim engines see each other's memory as SGLang's do (sim/memory.py)
        spec = replace(spec, sim_flags=(*spec.sim_flags, f"--sim-gpu-ledger={workdir / 'gpu-ledger'}"))
    # SGLang sizes its pool from the memory free when it starts (kv_cache_configurator.py): rest = free x
    # fraction - weights. Started together on one GPU, both count the whole GPU as free and one pool comes
    # out empty; so decode starts once prefill is ready (start() below), with a fraction of what is left:
    # prefill 0.45 of the GPU, decode 0.8 of the remaining 0.55 (~0.44), two pools of about equal size.
    prefill = EngineLaunch("prefill", p_port, bootstrap_port=boot, base_gpu_id=0,
                           mem_fraction_static=SHARED_PREFILL_FRACTION if shared else None)
    decode = EngineLaunch("decode", d_port, base_gpu_id=0 if shared else cfg.tp_size,
                          mem_fraction_static=SHARED_DECODE_FRACTION if shared else None)
    topo.prefill, topo.decode = [_url(cfg.host, p_port)], [_url(cfg.host, d_port)]
    topo.router = _url(cfg.host, entry)
    topo.processes += [
        proc("prefill", engine_argv(spec, prefill), topo.prefill[0] + "/ready"),
        proc("decode", engine_argv(spec, decode), topo.decode[0] + "/ready"),
        proc("router", router_argv(spec, entry, [(topo.prefill[0], boot)], topo.decode, prom),
             topo.router + "/readiness"),
    ]
    return topo


def start(topo: Topology) -> Topology:
    """Start engines in parallel, then the router; on any failure stop all and raise."""
    topo.config.check_installed()
    timeout = STARTUP_TIMEOUT_S[topo.config.backend]
    engines = [p for p in topo.processes if p.name != "router"]
    one_gpu = topo.config.share_gpu and topo.config.backend in ("sglang", "sim")
    try:
        if one_gpu:  # one after the other: each sizes its pool from what the previous one left free
            for p in engines:
                p.start()
                p.wait_ready(timeout)
        else:
            for p in engines:
                p.start()
            for p in engines:
                p.wait_ready(timeout)
        for p in topo.processes:
            if p.name == "router":
                p.start()
                p.wait_ready(timeout_s=60.0)
    except BaseException:
        topo.stop()
        raise
    return topo


class start_topology:
    """Context manager: plan, start, yield the Topology, always stop it."""

    def __init__(self, cfg: TopologyConfig, workdir: Path | None = None) -> None:
        self.cfg = cfg
        self._stack = ExitStack()
        self._workdir = workdir or cfg.workdir

    def __enter__(self) -> Topology:
        if self._workdir is None:
            self._workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="ppd-")))
        self.topo = start(plan(self.cfg, Path(self._workdir)))
        return self.topo

    def __exit__(self, *exc: object) -> None:
        try:
            self.topo.stop()
        finally:
            self._stack.close()


__all__ = ["Topology", "TopologyConfig", "ServerLaunchError", "plan", "start", "start_topology"]
