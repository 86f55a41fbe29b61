"""Where each path's requests go: topologies started (served backends) or built (virtual), and the
Target that describes them, one per path and run.

    targets = Targets(config, results_dir=lambda: Path("ppd-results/x"), notes=[])
    target = targets.get("remote")          # starts the P/D topology once (or builds it in virtual time)
    targets.driver("remote")                # None for HTTP, a VirtualDriver on the virtual backend
    targets.stop()
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Callable

import httpx

from pytest_ppd import __version__
from pytest_ppd.client.runner import Target
from pytest_ppd.config import PpdConfig
from pytest_ppd.errors import ConfigError, ServerLaunchError
from pytest_ppd.servers.commands import mask_secrets
from pytest_ppd.servers.topology import Topology, TopologyConfig, plan, start

TOPOLOGY_OF_PATH = {"local": "colocated", "remote": "pd"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(backend: str) -> dict[str, str]:
    return {"pytest_ppd": __version__, "sglang_router": _version("sglang-router"),
            "sglang": _version("sglang") if backend == "sglang" else backend}


def server_info(url: str, api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for path in ("/server_info", "/get_server_info"):
        try:
            resp = httpx.get(url + path, headers=headers, trust_env=False, timeout=10)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            data = resp.json()
            return data if isinstance(data, dict) else {}
    return {}


def pool_tokens_of(info: dict[str, Any]) -> int | None:
    if isinstance(info.get("max_total_num_tokens"), int):
        return info["max_total_num_tokens"]
    states = info.get("internal_states")
    if isinstance(states, list) and states and isinstance(states[0], dict):
        value = states[0].get("max_total_num_tokens")
        return value if isinstance(value, int) else None
    return None


class Targets:
    """The run's targets: one served topology at a time (LOCAL and P/D cannot share a GPU), both paths side
    by side in virtual time, URLs as given for an external deployment."""

    def __init__(self, config: PpdConfig, results_dir: Callable[[], Path], notes: list[str]) -> None:
        self.config, self._results_dir, self.notes = config, results_dir, notes
        self._topology: Topology | None = None
        self._targets: dict[str, Target] = {}
        self._deployments: dict[str, Any] = {}  # virtual backend: path -> Deployment
        self.suspect = False  # the last point failed: check the servers before the next one
        self._failed: dict[str, ServerLaunchError] = {}

    def versions(self) -> dict[str, str]:
        return versions(self.config.backend)

    def _healthy(self) -> bool:
        """After a failed point: are the servers still alive and answering?"""
        assert self._topology is not None
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        for proc in self._topology.processes:
            if not proc.alive or proc.health_url is None:
                continue
            try:
                if httpx.get(proc.health_url, headers=headers, trust_env=False, timeout=5).status_code == 200:
                    continue
            except httpx.HTTPError:
                pass
            return False
        return not self._topology.dead()

    def get(self, path: str) -> Target:
        topo = self._topology
        if topo is not None and (topo.dead() or (self.suspect and not self._healthy())):
            # A server died or stopped answering (crash, OOM, hang): restart so the next point can run.
            dead = ", ".join(p.name for p in topo.dead())
            why = f"{dead} exited" if dead else "a server stopped answering"
            self.notes.append(f"restarted the {path} topology after {why}")
            self.stop()
        self.suspect = False
        if path in self._targets:
            return self._targets[path]
        if self.config.backend == "external":
            return self._external_target(path)
        if self.config.backend == "virtual":
            return self._virtual_target(path)
        if path in self._failed:  # a topology that could not start is not retried for every point
            raise self._failed[path]
        self.stop()  # one topology at a time on a shared GPU
        c = self.config
        topo = plan(self._topology_config(path), self._results_dir() / "servers" / path)
        try:
            self._topology = start(topo)
        except ServerLaunchError as exc:
            self._failed[path] = exc
            raise
        engines = topo.prefill + topo.decode if path == "remote" else [topo.entry_url]
        infos = [server_info(url, c.api_key) for url in engines]
        pools = [p for p in (pool_tokens_of(i) for i in infos) if p is not None]
        versions = self.versions()
        if infos and infos[0].get("version"):
            versions["engine"] = str(infos[0]["version"])
        decode = infos[-1] if path == "remote" and infos else {}
        decode_pool = pool_tokens_of(decode)
        target = Target(path=path, url=topo.entry_url, flush_urls=tuple(engines), api_key=c.api_key,
                        pool_tokens=min(pools) if pools else None,
                        page_size=int(infos[0].get("page_size") or 1) if infos else 1,
                        server_argv=tuple(tuple(mask_secrets(a)) for a in topo.argvs()), versions=versions,
                        decode_pool=None if decode_pool is None else
                        (decode_pool, int(decode.get("num_reserved_decode_tokens") or 0)))
        self._targets = {path: target}
        return target

    def _topology_config(self, path: str) -> TopologyConfig:
        c = self.config
        return TopologyConfig(backend="sim" if c.backend == "virtual" else c.backend, kind=TOPOLOGY_OF_PATH[path],
                              model=c.model_arg, gpu=c.gpu.name, api_key=c.api_key, sim_flags=c.sim_args,
                              prefill_gpu=c.prefill_gpu.name if c.prefill_gpu else None,
                              transfer_backend=c.transfer_backend)

    def _virtual_target(self, path: str) -> Target:
        """In-process engines on a virtual clock: both paths can live side by side (no GPU to share)."""
        from pytest_ppd.servers.virtual import virtual_topology

        dep, argvs = virtual_topology(self._topology_config(path))
        self._deployments[path] = dep
        decode = [(n.cfg.pool_tokens, n.cfg.resolved.num_reserved_decode_tokens) for n in dep.decode]
        target = Target(path=path, url=f"virtual://{TOPOLOGY_OF_PATH[path]}", flush_urls=(),
                        pool_tokens=dep.pool_tokens, page_size=dep.page_size,
                        server_argv=tuple(tuple(mask_secrets(a)) for a in argvs), versions=self.versions(),
                        decode_pool=min(decode) if decode else None)
        self._targets[path] = target
        return target

    def driver(self, path: str) -> Any:
        """How a measurement reaches the path's servers: None for HTTP, a VirtualDriver on virtual."""
        if path not in self._deployments:
            return None
        from pytest_ppd.client.virtual import VirtualDriver

        return VirtualDriver(self._deployments[path])

    def measure_interference(self, wl: Any) -> tuple[Any, float]:
        """Background decode streams on the LOCAL server while one round of wl's appends runs there."""
        target = self.get("local")
        if "local" in self._deployments:
            from pytest_ppd.client.virtual import measure_interference_virtual

            return measure_interference_virtual(self._deployments["local"], wl)
        from pytest_ppd.client.interference import measure_interference

        return measure_interference(target.url, wl, api_key=target.api_key)

    def _external_target(self, path: str) -> Target:
        urls = self.config.urls or {}
        if path not in urls:
            raise ConfigError(f"--ppd-url gives no URL for the {path} path; use local=URL,remote=URL")
        url = urls[path]
        info = server_info(url, self.config.api_key)
        target = Target(path=path, url=url, flush_urls=(url,), api_key=self.config.api_key,
                        pool_tokens=pool_tokens_of(info), page_size=int(info.get("page_size") or 1),
                        versions={**self.versions(), "engine": str(info.get("version", "unknown"))})
        self._targets[path] = target
        return target

    def stop(self) -> None:
        if self._topology is not None:
            self._topology.stop()
            self._topology = None
            self._targets = {}

    @property
    def topology(self) -> Topology | None:
        return self._topology
