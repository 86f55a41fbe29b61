"""The plugin's effective configuration: every --ppd-* option, parsed and validated.

Each parser raises ConfigError with one line naming the option and what it
accepts; the plugin turns that into a pytest.UsageError.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, overload

from pytest_ppd.errors import ConfigError
from pytest_ppd.grid import GridPoint, parse_grid
from pytest_ppd.options import BACKENDS as BACKENDS  # re-exported: what the plugin and the CLI import from here
from pytest_ppd.options import PATHS as PATHS
from pytest_ppd.options import api_key_from_env as api_key_from_env
from pytest_ppd.options import parse_url as parse_url
from pytest_ppd.options import parse_urls as parse_urls
from pytest_ppd.options import (parse_backend, parse_ci, parse_max_reps, parse_reps, parse_results, parse_sim_args,
                                parse_timeout)
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL, GpuSpec, ModelSpec, gpu_spec, model_spec

DEFAULT_BACKEND = "virtual"
# Why a run used its backend: the report header says it, so a CI log shows what the numbers are.
WHY_DEFAULT = ("the default: the modeled GPU's time on a virtual clock, nothing of this host in a latency; "
               "--ppd-backend=sim serves the same engines over HTTP behind the real sglang-router")


@dataclass(frozen=True)
class RunIdentity:
    """What a run's numbers are numbers of: baselines must match it, expectations files and reports are named
    by it, --ppd-resume's design hash includes it."""

    backend: str
    model: str
    gpu: str
    prefill_gpu: str | None = None  # P's GPU where it differs from D's

    FIELDS: ClassVar[tuple[str, ...]] = ("backend", "gpu", "prefill_gpu", "model")

    def as_dict(self) -> dict[str, str]:
        out = {"backend": self.backend, "model": self.model, "gpu": self.gpu}
        if self.prefill_gpu is not None:
            out["prefill_gpu"] = self.prefill_gpu
        return out


@dataclass(frozen=True)
class PpdConfig:
    backend: str = DEFAULT_BACKEND
    backend_why: str = WHY_DEFAULT
    grid_name: str = "smoke"
    grid: tuple[GridPoint, ...] = ()
    model: ModelSpec = model_spec(DEFAULT_MODEL)
    model_arg: str = DEFAULT_MODEL  # the name or path as given: what the launcher loads
    gpu: GpuSpec = gpu_spec(DEFAULT_GPU)
    prefill_gpu: GpuSpec | None = None  # P's GPU when it differs from D's (heterogeneous P/D)
    reps: int = 3
    max_reps: int = 10
    ci: float = 0.05
    timeout_s: float = 600.0
    results: Path | None = None
    resume: bool = False
    urls: dict[str, str] | None = None
    replay: Path | None = None
    baseline: Path | None = None
    save_baseline: Path | None = None
    max_new_tokens: int = 1
    api_key: str | None = None
    expectations: Path | None = None
    sim_args: tuple[str, ...] = ()
    benchmark_json: Path | None = None
    transfer_backend: str = "mooncake_tcp"  # resolved from "auto" when the config is built

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.backend, self.model.name, self.gpu.name,
                           self.prefill_gpu.name if self.prefill_gpu else None)

    @property
    def config_hash(self) -> str:
        """Identity of a run's design: what --ppd-resume must match."""
        design: dict[str, Any] = {**self.identity.as_dict(), "grid": [p.id for p in self.grid],
                                  "max_new_tokens": self.max_new_tokens}
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]

    def results_dir(self) -> Path:
        if self.results is not None:
            return self.results
        return Path("ppd-results") / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.backend}"


def build_config(raw: dict[str, str | bool | None]) -> PpdConfig:
    """Parse raw option strings (CLI over ini over defaults) into a checked PpdConfig."""
    @overload
    def get(name: str) -> str | None: ...
    @overload
    def get(name: str, default: str) -> str: ...
    def get(name: str, default: str | None = None) -> str | None:
        value = raw.get(name)
        return default if value in (None, "") else str(value)

    backend = parse_backend(get("backend", DEFAULT_BACKEND))
    why = WHY_DEFAULT if get("backend") is None else "chosen with --ppd-backend (or the ppd_backend ini key)"
    grid_name = get("grid", "smoke")
    try:
        grid = parse_grid(grid_name)
    except ConfigError as exc:
        raise ConfigError(f"--ppd-grid: {exc}") from None
    try:
        model = model_spec(get("model", DEFAULT_MODEL))
    except ConfigError as exc:
        raise ConfigError(f"--ppd-model: {exc}") from None
    try:
        gpu = gpu_spec(get("gpu", DEFAULT_GPU))
    except ConfigError as exc:
        raise ConfigError(f"--ppd-gpu: {exc}") from None
    prefill_gpu = None
    prefill_gpu_arg = get("prefill_gpu")
    if prefill_gpu_arg:
        try:
            prefill_gpu = gpu_spec(prefill_gpu_arg)
        except ConfigError as exc:
            raise ConfigError(f"--ppd-prefill-gpu: {exc}") from None
        if prefill_gpu.name == gpu.name:
            prefill_gpu = None
        elif backend == "sglang":
            raise ConfigError("--ppd-prefill-gpu: --ppd-backend=sglang starts P and D on this node's GPUs; "
                              "drop the option, or describe a remote P with --ppd-backend=external")
    reps, max_reps = parse_reps(get("reps", "3")), parse_max_reps(get("max_reps", "10"))
    if max_reps < reps:
        raise ConfigError(f"--ppd-max-reps: {max_reps} is below --ppd-reps {reps}; give max-reps >= reps")
    results_arg = get("results")
    results = parse_results(results_arg) if results_arg else None
    resume = bool(raw.get("resume"))
    if resume and results is None:
        raise ConfigError("--ppd-resume needs --ppd-results DIR: the directory of the run to continue")
    url_arg = get("url")
    urls = parse_urls(url_arg) if url_arg else None
    if backend == "external" and not urls:
        raise ConfigError("--ppd-backend=external needs --ppd-url URL (or local=URL,remote=URL)")
    replay_arg = get("replay")
    replay = Path(replay_arg).expanduser() if replay_arg else None
    if backend == "replay":
        if replay is None:
            raise ConfigError("--ppd-backend=replay needs --ppd-replay RECORDS.jsonl")
        if not replay.is_file():
            raise ConfigError(f"--ppd-replay: {replay} does not exist; give a records.jsonl file")
    sim_args = parse_sim_args(get("sim_args", ""))
    from pytest_ppd.servers.commands import resolve_transfer_backend

    try:
        transfer = resolve_transfer_backend(get("transfer_backend", "auto"))
    except ConfigError as exc:
        raise ConfigError(f"--ppd-transfer-backend: {exc}") from None
    if backend == "virtual" and any(a.startswith("--sim-fault") for a in sim_args):
        raise ConfigError("--ppd-sim-args: --sim-fault needs served engines (faults hit HTTP servers); "
                          "add --ppd-backend=sim")
    baseline_arg, save_baseline_arg = get("baseline"), get("save_baseline")
    expectations_arg, benchmark_json_arg = get("expectations"), get("benchmark_json")
    cfg = PpdConfig(
        backend=backend, backend_why=why, grid_name=grid_name, grid=grid, model=model,
        model_arg=get("model", DEFAULT_MODEL),
        gpu=gpu, prefill_gpu=prefill_gpu, reps=reps,
        max_reps=max_reps, ci=parse_ci(get("ci", "0.05")), timeout_s=parse_timeout(get("timeout", "600")),
        results=results, resume=resume, urls=urls, replay=replay,
        baseline=Path(baseline_arg) if baseline_arg else None,
        save_baseline=Path(save_baseline_arg) if save_baseline_arg else None,
        api_key=api_key_from_env(),
        expectations=Path(expectations_arg).expanduser() if expectations_arg else None,
        sim_args=sim_args, transfer_backend=transfer,
        benchmark_json=Path(benchmark_json_arg).expanduser() if benchmark_json_arg else None,
    )
    _check_fresh_ids(grid, max_reps, model)
    if backend in ("virtual", "sim"):
        _check_fits(model, gpu, prefill_gpu)
    too_long = [p for p in grid if p.L + p.m + cfg.max_new_tokens > model.context_length]
    if too_long and backend != "replay":
        p = too_long[0]
        raise ConfigError(
            f"--ppd-grid: {len(too_long)} point(s) exceed {model.name}'s context length {model.context_length}, "
            f"e.g. {p.id} (L+m+{cfg.max_new_tokens} = {p.L + p.m + cfg.max_new_tokens}); shrink L or m")
    return cfg


def _check_fresh_ids(grid: tuple[GridPoint, ...], max_reps: int, model: ModelSpec) -> None:
    """Every append starts with an id no other append of its row used (client/workload.py): a row of
    n points at batch size BS needs n x max_reps x BS distinct ids from the vocabulary."""
    from pytest_ppd.client.workload import first_id_span

    span = first_id_span(model.vocab_size)
    rows: dict[tuple[int, int], int] = {}
    for p in grid:
        rows[(p.bs, p.L)] = rows.get((p.bs, p.L), 0) + 1
    for (bs, L), n in rows.items():
        if n * max_reps * bs > span:
            most = span // (n * bs)
            raise ConfigError(f"--ppd-max-reps: {max_reps} rounds x BS={bs} x {n} points of row bs{bs}-L{L} need "
                              f"{n * max_reps * bs} fresh first ids, {model.name}'s vocabulary offers {span}; "
                              f"give --ppd-max-reps <= {most}")


def _check_fits(model: ModelSpec, gpu: GpuSpec, prefill_gpu: GpuSpec | None) -> None:
    """The simulated engines need room for a KV pool next to the weights on one GPU (TP 1)."""
    from pytest_ppd.sglang_defaults import server_defaults

    for option, g in (("--ppd-gpu", gpu), ("--ppd-prefill-gpu", prefill_gpu)):
        if g is not None and server_defaults(model, g).pool_tokens <= 0:
            raise ConfigError(f"{option}: {model.name} ({model.weight_bytes / 1e9:.0f} GB of weights) leaves no KV "
                              f"pool on one {g.name}; pick a GPU with more memory (e.g. H200, B200) or a smaller "
                              "--ppd-model")
