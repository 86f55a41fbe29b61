"""The Record schema and its append-only, crash-safe JSONL store.

Every measured round is one line of ``<results>/records.jsonl``, written with
one ``os.write`` on an O_APPEND descriptor and fsynced before the next round
starts: a ``kill -9`` loses nothing already written, at worst a torn last line,
which readers skip and report.

    store = RecordStore(Path("ppd-results"), run_id="...", config_hash="...")
    store.append(record)
    RecordStore.read(path).rounds     # list[dict]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

from pytest_ppd.errors import ConfigError

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"


@dataclass(frozen=True)
class Record:
    """One measured round of one (point, path)."""

    suite: str
    backend: str
    path: str
    model: str
    gpu: str
    bs: int
    L: int
    m: int
    cache_rate: float
    round: int
    ttft_ms: list[float | None]
    batch_latency_ms: float | None
    batch_span_ms: float | None
    e2e_ms: list[float | None]
    itl_ms_max: list[float | None]
    prompt_tokens: list[int | None]
    cached_tokens: list[int | None]
    completion_tokens: list[int | None]
    server_ttft_ms: list[float | None]
    client_overhead_ms: list[float | None]
    errors: list[str | None]
    valid: bool
    invalid_reasons: list[str]
    floor_ms: float
    throughput_tok_s: float | None
    new_tok_s: float | None
    ms_per_append_token: float | None
    started_at: float
    versions: dict[str, str]
    server_argv: list[list[str]] = field(default_factory=list)
    run_id: str = ""
    kind: str = "round"
    prefill_gpu: str | None = None  # P's GPU where it differs from gpu (D's); written only then
    invalid_kinds: list[str] = field(default_factory=list)  # one per invalid reason (analysis/validity.Invalid)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Record":
        """A stored round as a Record: keys this version does not know are ignored, optional ones default."""
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ConfigError(f"a stored round lacks {', '.join(missing)}; it was not written by pytest-ppd")
        return cls(**{k: v for k, v in data.items() if k in known})

    # Read access by key, for suites written against the dict records of earlier versions
    # (``outcome.records[0]["floor_ms"]``); new code reads attributes.
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELDS else default

    def to_json(self) -> str:
        data = asdict(self)
        if data["prefill_gpu"] is None:
            del data["prefill_gpu"]
        return json.dumps(data, separators=(",", ":"), allow_nan=False)


_FIELDS = frozenset(f.name for f in fields(Record))
# A round as the analysis reads it: a Record, or a round of a records.jsonl as parsed JSON.
RoundLike = Record | dict[str, Any]


class DerivedRates(TypedDict):
    """The Record fields derived from a batch latency (splatted into Record)."""

    throughput_tok_s: float | None
    new_tok_s: float | None
    ms_per_append_token: float | None


def derived_rates(bs: int, L: int, m: int, latency_ms: float | None) -> DerivedRates:
    """throughput = BS(L+m)/latency, new tokens/s = BS m/latency, ms per append token = latency/m."""
    if not latency_ms:
        return {"throughput_tok_s": None, "new_tok_s": None, "ms_per_append_token": None}
    sec = latency_ms / 1e3
    return {"throughput_tok_s": bs * (L + m) / sec, "new_tok_s": bs * m / sec,
            "ms_per_append_token": latency_ms / m}


@dataclass
class StoredRecords:
    header: dict[str, Any] | None
    rounds: list[dict[str, Any]]
    done: list[dict[str, Any]]
    torn_tail: bool = False
    other: list[dict[str, Any]] = field(default_factory=list)  # e.g. interference measurements


class RecordStore:
    """Append-only JSONL file of one results directory."""

    def __init__(self, results_dir: Path, *, run_id: str, config_hash: str, resume: bool = False,
                 filename: str = RECORDS_FILE) -> None:
        self.dir = Path(results_dir)
        self.path = self.dir / filename  # a sharded run's worker writes its own file (shard.py)
        self.run_id, self.config_hash = run_id, config_hash
        self._check_dir()
        self.existing = StoredRecords(None, [], [])
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise ConfigError(
                    f"{self.path} already holds records; pass --ppd-resume to continue that run, "
                    "or choose an empty --ppd-results directory")
            self.existing = self.read(self.path, truncate_torn=True)
            head = self.existing.header or {}
            if head.get("config_hash") != config_hash:
                raise ConfigError(
                    f"--ppd-resume: {self.path} comes from a different grid/config "
                    f"({head.get('config_hash')} != {config_hash}); use a new --ppd-results directory")
        else:
            self._write_line(json.dumps({"kind": "header", "schema": SCHEMA_VERSION, "run_id": run_id,
                                         "config_hash": config_hash, "created_at": time.time()}))

    def _check_dir(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"--ppd-results {self.dir} is a file; give a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--ppd-results {self.dir} cannot be created ({exc.strerror}); choose a writable path") from None
        if not os.access(self.dir, os.W_OK):
            raise ConfigError(f"--ppd-results {self.dir} is not writable; choose a writable directory")

    def _write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path} ({exc}); free disk space or fix permissions") from None
        finally:
            os.close(fd)

    def append(self, record: Record) -> None:
        self._write_line(record.to_json())

    def mark_done(self, bs: int, L: int, m: int, path: str, n_rounds: int) -> None:
        self._write_line(json.dumps({"kind": "point_done", "bs": bs, "L": L, "m": m, "path": path,
                                     "n_rounds": n_rounds, "run_id": self.run_id}))

    def append_json(self, kind: str, payload: dict[str, Any]) -> None:
        """Any other measurement (interference, ...) as one line of its own kind."""
        self._write_line(json.dumps({"kind": kind, "run_id": self.run_id, **payload}, allow_nan=False))

    def rounds_for(self, bs: int, L: int, m: int, path: str) -> list[dict[str, Any]]:
        return [r for r in self.existing.rounds
                if (r["bs"], r["L"], r["m"], r["path"]) == (bs, L, m, path)]

    def is_done(self, bs: int, L: int, m: int, path: str) -> bool:
        return any((d["bs"], d["L"], d["m"], d["path"]) == (bs, L, m, path) for d in self.existing.done)

    @staticmethod
    def read(path: Path, truncate_torn: bool = False) -> StoredRecords:
        """Parse a records file; a torn last line is skipped (and cut when truncate_torn)."""
        raw = Path(path).read_bytes()
        out = StoredRecords(None, [], [])
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail.strip():
            out.torn_tail = True
            if truncate_torn:
                with open(path, "r+b") as fh:
                    fh.truncate(len(raw) - len(tail))
        for no, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}:{no} is not a JSON record; the file is damaged (only a torn "
                                  "last line can be repaired)") from None
            kind = obj.get("kind", "round")
            if kind == "header":
                out.header = obj
            elif kind == "point_done":
                out.done.append(obj)
            elif kind == "round":
                out.rounds.append(obj)
            else:
                out.other.append(obj)
        return out

