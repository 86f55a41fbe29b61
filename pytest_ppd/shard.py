"""The grid sharded over pytest-xdist workers (``pytest suites/ -n 4``).

    controller: picks one results directory and run id, hands them to every worker
                (pytest_configure_node), and at the end merges the workers' records
                into one records.jsonl and one report (merge).
    worker gwN: appends to records-gwN.jsonl in that directory; before measuring a
                (point, path) it claims it (claims/<point>-<path>, created exclusively),
                so no point is measured twice; a point another worker claimed is
                waited for and read from that worker's records (the analysis, which
                needs every point, waits the same way). Servers: its own topology
                (free ports); on sglang its own GPUs (--ppd-gpus-per-worker N: GPUs
                N*i .. N*i+N-1 of CUDA_VISIBLE_DEVICES, or of the node).

A claim names the claiming process; a claim whose process died is taken over, so a
crashed worker's points are measured by whoever asks next.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_ppd.errors import ConfigError, MeasurementError
from pytest_ppd.records import RECORDS_FILE, RecordStore, StoredRecords

WORKER_FILE = "records-{}.jsonl"
CLAIMS = "claims"
SHARDS = "shards"  # where the merged workers' files go
POLL_S = 0.05
INFEASIBLE = "point_infeasible"


def worker_of(config: Any) -> str | None:
    """'gw0', 'gw1', ... inside an xdist worker; None in the controller or without xdist."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("workerid") if isinstance(workerinput, dict) else None


def is_controller(config: Any) -> bool:
    """The xdist controller of a run with workers (-n N, N >= 1; xdist has set --dist by pytest_configure)."""
    option = config.option
    return (worker_of(config) is None and bool(getattr(option, "numprocesses", None))
            and getattr(option, "dist", "no") != "no" and not getattr(option, "collectonly", False))


def gpus_for(worker: str, per_worker: int, visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES of a worker: its own block of the node's (or the visible) GPUs."""
    index = int(worker.removeprefix("gw"))
    ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else None
    first = index * per_worker
    if ids is not None and first + per_worker > len(ids):
        last = first + per_worker - 1
        raise ConfigError(f"--ppd-gpus-per-worker {per_worker}: worker {worker} needs GPUs {first}..{last} of "
                          f"CUDA_VISIBLE_DEVICES={visible}; run fewer workers (-n) or give more GPUs")
    block = ids[first:first + per_worker] if ids is not None else [str(first + k) for k in range(per_worker)]
    return ",".join(block)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Shard:
    """One worker's view of the shared results directory."""

    def __init__(self, results_dir: Path, worker: str) -> None:
        self.dir, self.worker = Path(results_dir), worker
        (self.dir / CLAIMS).mkdir(parents=True, exist_ok=True)

    def store(self, run_id: str, config_hash: str, resume: bool) -> RecordStore:
        store = RecordStore(self.dir, run_id=run_id, config_hash=config_hash, resume=resume,
                            filename=WORKER_FILE.format(self.worker))
        merged = self.dir / RECORDS_FILE
        if resume and merged.exists():  # a resumed sharded run: what earlier runs merged counts as done
            earlier = RecordStore.read(merged)
            store.existing.rounds += earlier.rounds
            store.existing.done += earlier.done
        return store

    def claim(self, key: str) -> bool:
        """True if this worker is to measure key; False if another live worker has claimed it."""
        path = self.dir / CLAIMS / key
        mine = json.dumps({"worker": self.worker, "pid": os.getpid()})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if owner.get("pid") == os.getpid():
                return True
            if owner and not _alive(int(owner.get("pid", 0))):  # its worker died: take the point over
                path.write_text(mine)
                return True
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        return True

    def read_all(self) -> StoredRecords:
        """Every worker's records so far (torn last lines skipped)."""
        out = StoredRecords(None, [], [])
        for path in sorted(self.dir.glob(WORKER_FILE.format("*"))):
            part = RecordStore.read(path)
            out.header = out.header or part.header
            out.rounds += part.rounds
            out.done += part.done
            out.other += part.other
        return out

    def wait(self, bs: int, L: int, m: int, path: str, key: str, timeout_s: float) -> tuple[list[dict], str | None]:
        """(rounds, None) once another worker has finished the point, or ([], reason) if it found it infeasible."""
        deadline = time.monotonic() + timeout_s
        while True:
            stored = self.read_all()
            same = (bs, L, m, path)
            for row in stored.other:
                if row.get("kind") == INFEASIBLE and (row["bs"], row["L"], row["m"], row["path"]) == same:
                    return [], str(row["reason"])
            if any((d["bs"], d["L"], d["m"], d["path"]) == same for d in stored.done):
                return [r for r in stored.rounds if (r["bs"], r["L"], r["m"], r["path"]) == same], None
            if self.claim(key):  # its claimer died before finishing: measure it here
                return [], "claimed"
            if time.monotonic() > deadline:
                raise MeasurementError(f"{key}: waited {timeout_s:.0f} s for the worker measuring it; "
                                       "raise --ppd-timeout or run without -n")
            time.sleep(POLL_S)


def merge(results_dir: Path) -> Path | None:
    """One records.jsonl from the workers' files (and an earlier merged run's), the workers' files moved to
    shards/; None if no worker wrote anything."""
    results_dir = Path(results_dir)
    parts = sorted(results_dir.glob(WORKER_FILE.format("*")))
    if not parts:
        return None
    merged = results_dir / RECORDS_FILE
    lines: list[str] = []
    header_seen = False
    for path in ([merged] if merged.exists() else []) + parts:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                kind = json.loads(line).get("kind")
            except ValueError:
                continue  # a torn last line
            if kind == "header":
                if header_seen:
                    continue
                header_seen = True
            lines.append(line)
    tmp = merged.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, merged)
    (results_dir / SHARDS).mkdir(exist_ok=True)
    for path in parts:
        os.replace(path, results_dir / SHARDS / f"{path.stem}-{int(time.time())}{path.suffix}")
    return merged


class ControllerHooks:
    """Registered in the xdist controller: every worker gets the run's results directory and run id."""

    def __init__(self, results_dir: Path, run_id: str) -> None:
        self.results_dir, self.run_id = results_dir, run_id

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["ppd_results"] = str(self.results_dir)
        node.workerinput["ppd_run_id"] = self.run_id


def check_sharding(backend: str, workers: int, gpus_per_worker: int | None) -> None:
    """What a sharded run of this backend needs, as one usage line."""
    if backend == "external":
        raise ConfigError(f"-n {workers} with --ppd-backend=external: every worker would flush and load the same "
                          "servers; run without -n, or give each worker its own servers (--ppd-backend=sglang "
                          "--ppd-gpus-per-worker N)")
    if backend == "sglang" and not gpus_per_worker:
        raise ConfigError(f"-n {workers} with --ppd-backend=sglang: give --ppd-gpus-per-worker N (2 for P + D at "
                          "TP 1), so that each worker starts its servers on its own GPUs")


def make_session(config: Any, ppd_config: Any, gpus_per_worker: str | None) -> Any:
    """The run's PpdSession: under pytest-xdist a worker's share of it, or the controller that merges."""
    from pytest_ppd.options import parse_reps
    from pytest_ppd.session import PpdSession

    try:
        per_worker = parse_reps(str(gpus_per_worker)) if gpus_per_worker else None  # a positive integer
    except ConfigError:
        raise ConfigError(f"--ppd-gpus-per-worker: '{gpus_per_worker}' is not a positive integer") from None
    worker = worker_of(config)
    if worker is not None and ppd_config.backend != "replay":
        results = Path(config.workerinput["ppd_results"])
        if per_worker:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus_for(worker, per_worker, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return PpdSession(replace(ppd_config, results=results), run_id=config.workerinput["ppd_run_id"],
                          shard=Shard(results, worker))
    session = PpdSession(ppd_config)
    if is_controller(config) and ppd_config.backend != "replay":
        check_sharding(ppd_config.backend, config.option.numprocesses, per_worker)
        config.pluginmanager.register(ControllerHooks(session.results_dir, session.run_id), "ppd-shard")
    return session


def merge_into(config: Any, ppd: Any) -> bool:
    """In the xdist controller: the workers' records as one records.jsonl, adopted for the report."""
    if not is_controller(config) or ppd.config.backend == "replay":
        return False
    merged = merge(ppd.results_dir)
    if merged is None:
        return False
    ppd.adopt(RecordStore.read(merged), merged)
    return True
