"""The plugin's session object: one per pytest run, kept in config.stash.

It measures each (point, path) once through its targets (targets.py), keeps the
record store and the outcomes, and analyses what was measured; the terminal
summary and the reports get a frozen RunSummary of it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ppd.client.runner import PointOutcome, Settings, Target, measure_point
from pytest_ppd.config import PpdConfig
from pytest_ppd.errors import Infeasible
from pytest_ppd.grid import GridPoint
from pytest_ppd.records import Record, RecordStore, StoredRecords
from pytest_ppd.replay import Replay
from pytest_ppd.shard import INFEASIBLE, Shard
from pytest_ppd.targets import Targets, versions

if TYPE_CHECKING:
    from pytest_ppd.analysis.study import Study
    from pytest_ppd.report.terminal import RunSummary
    from pytest_ppd.expectations import Expectations

@dataclass
class PpdSession:
    config: PpdConfig
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outcomes: list[PointOutcome] = field(default_factory=list)
    infeasible: list[tuple[GridPoint, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _store: RecordStore | None = None
    _results_dir: Path | None = None
    _measured: dict[tuple[GridPoint, str], PointOutcome] = field(default_factory=dict)
    _last_row: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    _study: Any = None
    _expectations: dict[Path, Any] = field(default_factory=dict)  # loaded files, by path (read once)
    _baseline: dict[str, Any] | None = None
    _study_n: int = 0
    _infeasible: dict[tuple[GridPoint, str], Infeasible] = field(default_factory=dict)  # decided once per point
    shard: Shard | None = None  # an xdist worker's share of a sharded run (shard.py)
    _merged: Path | None = None  # the xdist controller: the records file the workers' shares were merged into

    def __post_init__(self) -> None:
        self.targets = Targets(self.config, lambda: self.results_dir, self.notes)
        self._replay: Replay | None = None

    @property
    def has_store(self) -> bool:
        return self._store is not None

    @property
    def store_path(self) -> Path | None:
        """The run's records file: this process's store, or the one a sharded run merged into."""
        return self._store.path if self._store is not None else self._merged

    def adopt(self, stored: StoredRecords, path: Path) -> None:
        """Take a merged sharded run's rounds as this session's outcomes (the controller reports them)."""
        rows: dict[tuple[int, int, int, str], list[dict]] = {}
        for r in stored.rounds:
            rows.setdefault((int(r["bs"]), int(r["L"]), int(r["m"]), str(r["path"])), []).append(r)
        self.outcomes = [PointOutcome.of(GridPoint(bs, L, m), path_, rounds)
                         for (bs, L, m, path_), rounds in rows.items()]
        self._merged = path
        self.analysis()

    @property
    def results_dir(self) -> Path:
        if self._results_dir is None:
            self._results_dir = self.config.results_dir()
        return self._results_dir

    @property
    def store(self) -> RecordStore:
        if self._store is None:
            if self.shard is not None:
                self._store = self.shard.store(self.run_id, self.config.config_hash, self.config.resume)
            else:
                self._store = RecordStore(self.results_dir, run_id=self.run_id,
                                          config_hash=self.config.config_hash, resume=self.config.resume)
        return self._store

    def versions(self) -> dict[str, str]:
        return versions(self.config.backend)

    def settings(self, suite: str) -> Settings:
        c = self.config
        return Settings(suite=suite, backend=c.backend, model=c.model, gpu=c.gpu, prefill_gpu=c.prefill_gpu,
                        min_reps=c.reps,
                        max_reps=c.max_reps, ci_target=c.ci, max_new_tokens=c.max_new_tokens,
                        run_id=self.run_id, timeout_s=c.timeout_s)

    # -- targets ---------------------------------------------------------------
    def target(self, path: str) -> Target:
        """The path's target, its servers started (or built) once per run."""
        return self.targets.get(path)

    def driver(self, path: str) -> Any:
        return self.targets.driver(path)

    def measure_interference(self, wl: Any) -> tuple[Any, float]:
        """Background decode streams on the LOCAL server while one round of wl's appends runs there."""
        return self.targets.measure_interference(wl)

    def stop_topology(self) -> None:
        self.targets.stop()
        self._last_row = {}

    # -- analysis -------------------------------------------------------------
    @property
    def has_study(self) -> bool:
        return self._study is not None

    def records(self) -> list[Record]:
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

        ident = self.config.identity
        if ident.backend == "replay":  # the expectations of the backend that measured the records
            backends = {r.get("backend") for r in self.records()}
            ident = replace(ident, backend=str(backends.pop()) if len(backends) == 1 else "replay")
        path = expectations_file(ident.backend, ident.gpu, ident.model, directory, ident.prefill_gpu)
        if path not in self._expectations:
            self._expectations[path] = load(path)
        return self._expectations[path]

    # -- baselines ---------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The run's identity and versions, as a baseline records them."""
        return {**self.config.identity.as_dict(), "versions": self.versions()}

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

    def summary(self) -> "RunSummary":
        """A frozen summary for the terminal: what was measured and its analysis (nothing is measured here)."""
        from pytest_ppd.report.terminal import RunSummary

        return RunSummary(tuple(self.outcomes), tuple(self.infeasible), tuple(self.notes),
                          self.analysis() if self.has_study else None,
                          self.store_path)

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
                self._measured[key] = self._shared(point, path, suite) if self.shard else self._measure(
                    point, path, suite)
            except Infeasible as exc:
                self._infeasible[key] = exc
                raise
        return self._measured[key]

    def _shared(self, point: GridPoint, path: str, suite: str) -> PointOutcome:
        """A sharded run: measure what this worker claims; wait for and read what another worker claimed."""
        assert self.shard is not None
        key = f"{point.id}-{path}"
        if not self.shard.claim(key):
            rounds, reason = self.shard.wait(point.bs, point.L, point.m, path, key, self.config.timeout_s * 4)
            if reason is None:
                outcome = PointOutcome.of(point, path, rounds)
                self.outcomes.append(outcome)
                return outcome
            if reason != "claimed":
                raise Infeasible(reason)
        try:
            return self._measure(point, path, suite)
        except Infeasible as exc:  # say so in the records, for the workers waiting on this point
            self.store.append_json(INFEASIBLE, {"bs": point.bs, "L": point.L, "m": point.m, "path": path,
                                                "reason": str(exc)})
            raise

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
                self.targets.suspect = True
                self._last_row[path] = None
                raise
            if not outcome.valid:
                self.targets.suspect = True
            self._last_row[path] = (point.bs, point.L) if in_grid else None
        self.outcomes.append(outcome)
        return outcome

    def _from_store(self, point: GridPoint, path: str) -> PointOutcome:
        return PointOutcome.of(point, path, self.store.rounds_for(point.bs, point.L, point.m, path))

    def _replayed(self, point: GridPoint, path: str) -> PointOutcome:
        assert self.config.replay is not None
        if self._replay is None:
            self._replay = Replay(self.config.replay, self.config.model, self.config.gpu)
        return self._replay.outcome(point, path)
