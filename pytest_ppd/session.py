"""The plugin's session object: one per pytest run, kept in config.stash.

It owns the topologies (one at a time: LOCAL and P/D cannot share a GPU), the
record store and the outcomes the terminal summary reports.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pytest_ppd import __version__
from pytest_ppd.analysis.stats import summarize
from pytest_ppd.client.runner import PointOutcome, Settings, Target, measure_point
from pytest_ppd.config import PpdConfig
from pytest_ppd.errors import ConfigError, Infeasible
from pytest_ppd.grid import GridPoint
from pytest_ppd.records import RecordStore
from pytest_ppd.servers.topology import Topology, TopologyConfig, plan, start

if TYPE_CHECKING:
    from pytest_ppd.analysis.study import Study
    from pytest_ppd.expectations import Expectations

TOPOLOGY_OF_PATH = {"local": "colocated", "remote": "pd"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _server_info(url: str, api_key: str | None) -> dict[str, Any]:
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


@dataclass
class PpdSession:
    config: PpdConfig
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outcomes: list[PointOutcome] = field(default_factory=list)
    infeasible: list[tuple[GridPoint, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _store: RecordStore | None = None
    _topology: Topology | None = None
    _targets: dict[str, Target] = field(default_factory=dict)
    _results_dir: Path | None = None
    _measured: dict[tuple[GridPoint, str], PointOutcome] = field(default_factory=dict)
    _last_row: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    _study: Any = None
    _expectations: dict[Path, Any] = field(default_factory=dict)  # loaded files, by path (read once)
    _suspect: bool = False  # the last point failed: check the servers before the next one
    _baseline: dict[str, Any] | None = None
    _study_n: int = 0
    _deployments: dict[str, Any] = field(default_factory=dict)  # virtual backend: path -> Deployment
    _infeasible: dict[tuple[GridPoint, str], Infeasible] = field(default_factory=dict)  # decided once per point

    @property
    def results_dir(self) -> Path:
        if self._results_dir is None:
            self._results_dir = self.config.results_dir()
        return self._results_dir

    @property
    def store(self) -> RecordStore:
        if self._store is None:
            self._store = RecordStore(self.results_dir, run_id=self.run_id,
                                      config_hash=self.config.config_hash, resume=self.config.resume)
        return self._store

    def versions(self) -> dict[str, str]:
        return {"pytest_ppd": __version__, "sglang_router": _version("sglang-router"),
                "sglang": _version("sglang") if self.config.backend == "sglang" else self.config.backend}

    def settings(self, suite: str) -> Settings:
        c = self.config
        return Settings(suite=suite, backend=c.backend, model=c.model, gpu=c.gpu, prefill_gpu=c.prefill_gpu,
                        min_reps=c.reps,
                        max_reps=c.max_reps, ci_target=c.ci, max_new_tokens=c.max_new_tokens,
                        run_id=self.run_id, timeout_s=c.timeout_s)

    # -- topologies ----------------------------------------------------------
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

    def target(self, path: str) -> Target:
        topo = self._topology
        if topo is not None and (topo.dead() or (self._suspect and not self._healthy())):
            # A server died or stopped answering (crash, OOM, hang): restart so the next point can run.
            dead = ", ".join(p.name for p in topo.dead())
            why = f"{dead} exited" if dead else "a server stopped answering"
            self.notes.append(f"restarted the {path} topology after {why}")
            self.stop_topology()
        self._suspect = False
        if path in self._targets:
            return self._targets[path]
        if self.config.backend == "external":
            return self._external_target(path)
        if self.config.backend == "virtual":
            return self._virtual_target(path)
        self.stop_topology()  # one topology at a time on a shared GPU
        c = self.config
        topo = plan(self._topology_config(path), self.results_dir / "servers" / path)
        self._topology = start(topo)
        engines = topo.prefill + topo.decode if path == "remote" else [topo.entry_url]
        infos = [_server_info(url, c.api_key) for url in engines]
        pools = [p for p in (pool_tokens_of(i) for i in infos) if p is not None]
        versions = self.versions()
        if infos and infos[0].get("version"):
            versions["engine"] = str(infos[0]["version"])
        decode = infos[-1] if path == "remote" and infos else {}
        decode_pool = pool_tokens_of(decode)
        target = Target(path=path, url=topo.entry_url, flush_urls=tuple(engines), api_key=c.api_key,
                        pool_tokens=min(pools) if pools else None,
                        page_size=int(infos[0].get("page_size") or 1) if infos else 1,
                        server_argv=tuple(tuple(_masked(a)) for a in topo.argvs()), versions=versions,
                        decode_pool=None if decode_pool is None else
                        (decode_pool, int(decode.get("num_reserved_decode_tokens") or 0)))
        self._targets = {path: target}
        return target

    def _topology_config(self, path: str) -> TopologyConfig:
        c = self.config
        return TopologyConfig(backend="sim" if c.backend == "virtual" else c.backend, kind=TOPOLOGY_OF_PATH[path],
                              model=c.model_arg, gpu=c.gpu.name, api_key=c.api_key, sim_flags=c.sim_args,
                              prefill_gpu=c.prefill_gpu.name if c.prefill_gpu else None)

    def _virtual_target(self, path: str) -> Target:
        """In-process engines on a virtual clock: both paths can live side by side (no GPU to share)."""
        from pytest_ppd.servers.virtual import virtual_topology

        dep, argvs = virtual_topology(self._topology_config(path))
        self._deployments[path] = dep
        decode = [(n.cfg.pool_tokens, n.cfg.resolved.num_reserved_decode_tokens) for n in dep.decode]
        target = Target(path=path, url=f"virtual://{TOPOLOGY_OF_PATH[path]}", flush_urls=(),
                        pool_tokens=dep.pool_tokens, page_size=dep.page_size,
                        server_argv=tuple(tuple(_masked(a)) for a in argvs), versions=self.versions(),
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
        target = self.target("local")
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
        info = _server_info(url, self.config.api_key)
        target = Target(path=path, url=url, flush_urls=(url,), api_key=self.config.api_key,
                        pool_tokens=pool_tokens_of(info), page_size=int(info.get("page_size") or 1),
                        versions={**self.versions(), "engine": str(info.get("version", "unknown"))})
        self._targets[path] = target
        return target

    def stop_topology(self) -> None:
        if self._topology is not None:
            self._topology.stop()
            self._topology = None
            self._targets = {}
            self._last_row = {}

    # -- analysis -------------------------------------------------------------
    @property
    def has_study(self) -> bool:
        return self._study is not None

    def records(self) -> list[dict]:
        return [r for o in self.outcomes for r in o.records]

    def study(self) -> "Study":
        """Measure whatever grid point is missing (both paths), then analyse everything measured."""
        for path in ("local", "remote"):
            for point in self.config.grid:
                try:
                    self.measure(point, path, "append_grid")
                except Infeasible:
                    pass
        study = self.analysis()
        assert study is not None
        return study

    def analysis(self) -> "Study | None":
        """The analysis of what this run measured so far; never measures or launches anything."""
        from pytest_ppd.analysis.study import analyze

        if not self.outcomes and self._study is None:
            return None
        if self._study is None or self._study_n != len(self.outcomes):
            grid = set(self.config.grid)
            records = [r for o in self.outcomes if o.point in grid for r in o.records]
            self._study = analyze(records, self.config.model, self.config.gpu)
            self._study_n = len(self.outcomes)
        return self._study

    def expectations(self, directory: Path) -> "Expectations":
        from pytest_ppd.expectations import expectations_file, load

        backend: str | None = self.config.backend
        if backend == "replay":
            backends = {r.get("backend") for r in self.records()}
            backend = backends.pop() if len(backends) == 1 else "replay"
        c = self.config
        path = expectations_file(backend, c.gpu.name, c.model.name, directory,
                                 c.prefill_gpu.name if c.prefill_gpu else None)
        if path not in self._expectations:
            self._expectations[path] = load(path)
        return self._expectations[path]

    # -- baselines ---------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        c = self.config
        ident = {"backend": c.backend, "gpu": c.gpu.name, "model": c.model.name, "versions": self.versions()}
        if c.prefill_gpu is not None:
            ident["prefill_gpu"] = c.prefill_gpu.name
        return ident

    def baseline(self) -> dict[str, Any] | None:
        """The --ppd-baseline file, loaded and checked against this run once."""
        from pytest_ppd import baseline as bl

        if self.config.baseline is None:
            return None
        if self._baseline is None:
            data = bl.load(self.config.baseline)
            bl.check_identity(data, self.identity())
            self._baseline = data
        return self._baseline

    def save_baseline(self) -> Path | None:
        """Write --ppd-save-baseline from what this run measured (no new measurements)."""
        from pytest_ppd import baseline as bl
        from pytest_ppd.analysis.study import analyze

        target = self.config.save_baseline
        if target is None or not self.outcomes:
            return None
        grid = set(self.config.grid)
        outcomes = [o for o in self.outcomes if o.point in grid]
        study = analyze([r for o in outcomes for r in o.records], self.config.model, self.config.gpu)
        tolerance = bl.VIRTUAL_TOLERANCE if self.config.backend == "virtual" else bl.DEFAULT_TOLERANCE
        bl.save(target, bl.build(study, outcomes, self.identity(), tolerance))
        return target

    def note(self, line: str) -> None:
        """A line for the end-of-run summary (suites report derived results this way)."""
        self.notes.append(line)

    def close(self) -> None:
        self.stop_topology()

    # -- measurement ---------------------------------------------------------
    def measure(self, point: GridPoint, path: str, suite: str) -> PointOutcome:
        """Measure (point, path) once per run; later asks (another suite, experiment) reuse it."""
        key = (point, path)
        if key in self._infeasible:
            raise self._infeasible[key]  # decided once: asking again must not restart a topology
        if key not in self._measured:
            try:
                self._measured[key] = self._measure(point, path, suite)
            except Infeasible as exc:
                self._infeasible[key] = exc
                raise
        return self._measured[key]

    def _measure(self, point: GridPoint, path: str, suite: str) -> PointOutcome:
        if self.config.backend == "replay":
            outcome = self._replayed(point, path)
        elif self.config.resume and self.store.is_done(point.bs, point.L, point.m, path):
            outcome = self._from_store(point, path)
        else:
            target = self.target(path)
            why = target.capacity_problem(point)
            if why is not None:
                if (point, path, why) not in self.infeasible:
                    self.infeasible.append((point, path, why))
                raise Infeasible(why)
            # Points of one grid row share contexts: keep the cache, give each its own block of append ids.
            row = [p for p in self.config.grid if (p.bs, p.L) == (point.bs, point.L)]
            in_grid = point in row
            keep = in_grid and self._last_row.get(path) == (point.bs, point.L)
            try:
                outcome = measure_point(target, point, self.settings(suite), self.store, flush=not keep,
                                        slot=row.index(point) if in_grid else 0, driver=self.driver(path))
            except BaseException:
                self._suspect = True
                self._last_row[path] = None
                raise
            if not outcome.valid:
                self._suspect = True
            self._last_row[path] = (point.bs, point.L) if in_grid else None
        self.outcomes.append(outcome)
        return outcome

    def _from_store(self, point: GridPoint, path: str) -> PointOutcome:
        records = self.store.rounds_for(point.bs, point.L, point.m, path)
        valid = [r["batch_latency_ms"] for r in records if r["valid"]]
        return PointOutcome(point, path, records, summarize(valid) if valid else None)

    def _reprove(self, record: dict[str, Any]) -> dict[str, Any]:
        """Stored verdicts are not trusted: the floor is checked again against --ppd-model/--ppd-gpu."""
        from pytest_ppd.importer import physical_reasons

        latency = record.get("batch_span_ms") or record.get("batch_latency_ms")
        if latency is None:
            return record
        fresh = physical_reasons(record["bs"], record["L"], record["m"], latency, self.config.model,
                                 self.config.gpu, None)
        reasons = list(record.get("invalid_reasons") or []) + [r for r in fresh if r not in
                                                                (record.get("invalid_reasons") or [])]
        return {**record, "invalid_reasons": reasons, "valid": bool(record.get("valid")) and not reasons}

    def _replayed(self, point: GridPoint, path: str) -> PointOutcome:
        assert self.config.replay is not None
        if not hasattr(self, "_replay_rounds"):
            self._replay_rounds = [self._reprove(r) for r in RecordStore.read(self.config.replay).rounds]
        records = [r for r in self._replay_rounds if (r["bs"], r["L"], r["m"], r["path"]) ==
                   (point.bs, point.L, point.m, path)]
        valid = [r["batch_latency_ms"] for r in records if r["valid"]]
        return PointOutcome(point, path, records, summarize(valid) if valid else None)


def _masked(argv: list[str]) -> list[str]:
    from pytest_ppd.servers.commands import mask_secrets

    return mask_secrets(argv)
