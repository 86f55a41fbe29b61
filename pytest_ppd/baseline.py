"""Baselines and the regression gate.

A baseline (JSON, versioned schema) holds, for one backend + GPU + model: per
point and path the round samples and their median with CI, per row the regimes
and the exponent with CI, and per point the faster route. A point regresses
when it is slower than the baseline by more than the tolerance **and** that is
statistically significant: a one-sided Welch t-test on log latencies against
the baseline shifted by the tolerance, Bonferroni-corrected for the number of
points in the baseline. A flipped regime (clear of the thresholds by
REGIME_MARGIN) or route, or an exponent whose CI no longer overlaps the
baseline's, is a regression too. Improvements are reported.

    save(path, build(study, outcomes, identity))
    base = load(path); check_identity(base, identity)
    findings = compare_run(base, rounds, study, gate)   # the gate, for the plugin and `ppd compare` alike
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from pytest_ppd.analysis.regime import COMPUTE_FROM, OVERHEAD_BELOW, REGIME_MARGIN
from pytest_ppd.analysis.policies import clearly_faster
from pytest_ppd.analysis.stats import one_sided_p
from pytest_ppd.errors import ConfigError

if TYPE_CHECKING:
    from pytest_ppd.records import RoundLike

SCHEMA = 1
DEFAULT_TOLERANCE = 0.10
# Virtual time is deterministic: a baseline of it allows only float rounding, so any model change shows.
VIRTUAL_TOLERANCE = 1e-9
ALPHA = 0.05
# Likewise an exponent must move by more than this (beyond non-overlapping CIs): within-run bootstrap
# CIs do not see run-to-run drift, and a 0.03 change of slope is no change of behaviour.
EXPONENT_TOLERANCE = 0.10


def point_key(bs: int, L: int, m: int, path: str) -> str:
    return f"bs{bs}-L{L}-m{m}-{path}"


def write_atomic(path: Path, text: str) -> None:
    """temp file in the same directory, fsync, rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # reports and baselines are for sharing (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(study: Any, outcomes: Iterable[Any], identity: dict[str, Any],
          tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    points = {}
    for o in outcomes:
        samples = [r.batch_latency_ms for r in o.valid if r.batch_latency_ms is not None]
        if not samples or o.summary is None:
            continue
        s = o.summary
        points[point_key(o.point.bs, o.point.L, o.point.m, o.path)] = {
            "bs": o.point.bs, "L": o.point.L, "m": o.point.m, "path": o.path, "n": s.n,
            "median_ms": s.median, "ci_low_ms": s.ci_low, "ci_high_ms": s.ci_high, "samples_ms": samples}
    rows: dict[str, Any] = {}
    for r in study.fits.itertuples():
        rows[f"{r.path}/bs{r.bs}/L{r.L}"] = {"exponent": r.exponent, "ci_low": r.ci_low, "ci_high": r.ci_high}
    for r in study.cells.itertuples():
        key = f"{r.path}/bs{r.bs}/L{r.L}"
        rows.setdefault(key, {}).setdefault("regimes", {})[str(r.m)] = r.regime
    routes = {f"bs{r.bs}-L{r.L}-m{r.m}": r.oracle for r in study.truth.itertuples()} if not study.truth.empty else {}
    return {"schema": SCHEMA, "kind": "pytest-ppd-baseline", **identity, "created_at": time.time(),
            "tolerance": tolerance, "points": points, "rows": rows, "routes": routes}


def save(path: Path, baseline: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(baseline, indent=1, allow_nan=False) + "\n")


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--ppd-baseline: {path} does not exist; record one with --ppd-save-baseline") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--ppd-baseline: {path} is not a baseline file ({exc}); re-record it") from None
    if not isinstance(data, dict) or data.get("kind") != "pytest-ppd-baseline":
        raise ConfigError(f"--ppd-baseline: {path} is not a pytest-ppd baseline; re-record it")
    if not isinstance(data.get("schema"), int) or data["schema"] > SCHEMA:
        raise ConfigError(f"--ppd-baseline: {path} has schema {data.get('schema')}, newer than this pytest-ppd "
                          f"reads ({SCHEMA}); upgrade pytest-ppd")
    for field in ("backend", "gpu", "model", "points"):
        if field not in data:
            raise ConfigError(f"--ppd-baseline: {path} lacks '{field}'; re-record it")
    return data


def check_identity(baseline: dict[str, Any], identity: dict[str, Any]) -> None:
    from pytest_ppd.config import RunIdentity

    for field in RunIdentity.FIELDS:
        if baseline.get(field) != identity.get(field):
            raise ConfigError(f"--ppd-baseline was recorded with {field}={baseline.get(field)!r}, this run uses "
                              f"{identity.get(field)!r}; compare like with like or record a new baseline")


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # "regression" | "improvement" | "unchanged"
    text: str


def compare_point(baseline: dict[str, Any], key: str, samples_ms: list[float],
                  tolerance: float | None = None) -> Finding | None:
    """The verdict on one point's samples against the baseline (None: not in the baseline)."""
    old = baseline["points"].get(key)
    if old is None or not samples_ms:
        return None
    tol = baseline.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None else tolerance
    n_points = max(len(baseline["points"]), 1)
    alpha = ALPHA / n_points
    new = np.log(np.asarray(samples_ms, float))
    ref = np.log(np.asarray(old["samples_ms"], float))
    new_med, old_med = float(np.exp(np.median(new))), float(old["median_ms"])
    change = new_med / old_med - 1
    p_slow = one_sided_p(new, ref + math.log1p(tol))
    p_fast = one_sided_p(ref - math.log1p(tol), new)
    tol_text = f"{tol:.0%}" if tol >= 0.01 else f"{tol:.1g}"
    detail = (f"median {old_med:.2f} -> {new_med:.2f} ms ({change:+.1%}; baseline 95% CI "
              f"{old['ci_low_ms']:.2f}..{old['ci_high_ms']:.2f} ms, n={old['n']} -> n={len(samples_ms)}); "
              f"tolerance {tol_text}")
    if change > tol and p_slow < alpha:
        return Finding(key, "regression", f"{key} regressed: {detail}; p={p_slow:.2g} < {alpha:.2g} "
                                          f"(0.05 Bonferroni-corrected over {n_points} points)")
    if change < -tol and p_fast < alpha:
        return Finding(key, "improvement", f"{key} improved: {detail}; p={p_fast:.2g}")
    return Finding(key, "unchanged", f"{key}: {detail}; p={min(p_slow, p_fast):.2g}")


def compare_study(baseline: dict[str, Any], study: Any, exponent_tolerance: float | None = None) -> list[Finding]:
    """Flipped regimes, routes now faster beyond noise the other way, and exponents whose CI no
    longer overlaps the baseline's (by more than the exponent tolerance)."""
    exp_tol = EXPONENT_TOLERANCE if exponent_tolerance is None else exponent_tolerance
    out = []
    rows = baseline.get("rows", {})
    for r in study.cells.itertuples():
        old = rows.get(f"{r.path}/bs{r.bs}/L{r.L}", {}).get("regimes", {}).get(str(r.m))
        clear = min(abs(r.elasticity - OVERHEAD_BELOW), abs(r.elasticity - COMPUTE_FROM)) >= REGIME_MARGIN
        if old and r.regime and old != r.regime and clear:
            out.append(Finding(f"{r.path}/bs{r.bs}/L{r.L}/m{r.m}", "regression",
                               f"regime of bs{r.bs}-L{r.L}-m{r.m} [{r.path}] flipped: {old} -> {r.regime} "
                               f"(elasticity {r.elasticity:.3f}, "
                               f"clear of the 0.25/0.75 thresholds by >= {REGIME_MARGIN})"))
    for r in study.fits.itertuples():
        old = rows.get(f"{r.path}/bs{r.bs}/L{r.L}")
        apart = old and "ci_low" in old and (r.ci_high < old["ci_low"] or r.ci_low > old["ci_high"])
        if apart and abs(r.exponent - old["exponent"]) > exp_tol:
            out.append(Finding(f"{r.path}/bs{r.bs}/L{r.L}", "regression",
                               f"exponent of bs{r.bs}-L{r.L} [{r.path}] moved: {old['exponent']:.3f} "
                               f"[{old['ci_low']:.3f}, {old['ci_high']:.3f}] -> {r.exponent:.3f} "
                               f"[{r.ci_low:.3f}, {r.ci_high:.3f}] (95% CIs no longer overlap; moved > {exp_tol})"))
    routes = baseline.get("routes", {})
    if not study.truth.empty:
        for r in study.truth.itertuples():
            key = f"bs{r.bs}-L{r.L}-m{r.m}"
            if key not in routes or routes[key] == r.oracle:
                continue
            clear, evidence = clearly_faster(study.rounds, r.bs, r.L, r.m, r.oracle)
            text = (f"route of {key} flipped: {routes[key]} -> {r.oracle} "
                    f"(local {r.local_ms:.2f} ms, remote {r.remote_ms:.2f} ms{evidence})")
            out.append(Finding(key, "regression", text) if clear else
                       Finding(key, "unchanged", f"{text}; a tie within noise, not a regression"))
    return out


def compare_run(baseline: dict[str, Any], rounds: Iterable[RoundLike], study: Any = None,
                gate: Any = None) -> list[Finding]:
    """The regression gate: every point of these rounds against the baseline (its valid rounds' batch
    latencies, at the tolerance the gate settings give it), then, with a study, flipped regimes and routes
    and moved exponents. gate: an expectations.GateSettings (None: the baseline's own tolerances)."""
    samples: dict[str, list[float]] = {}
    for r in rounds:
        if r["valid"]:
            samples.setdefault(point_key(r["bs"], r["L"], r["m"], r["path"]), []).append(r["batch_latency_ms"])
    findings = [f for key, xs in sorted(samples.items())
                if (f := compare_point(baseline, key, xs, gate.tolerance_for(key) if gate else None)) is not None]
    if study is not None:
        findings += compare_study(baseline, study, gate.exponent_tolerance if gate else None)
    return findings


def compare_dir(directory: Path, baseline_path: Path, expectations: Path | None = None) -> list[Finding]:
    """The gate's findings for a results directory against a baseline (what `ppd compare` prints).

    Tolerances come from the [baseline] section of the expectations file for the baseline's backend, GPU
    and model in ``expectations`` (a directory), when there is one.
    """
    from pytest_ppd.analysis.study import analyze
    from pytest_ppd import expectations as ex
    from pytest_ppd.records import RECORDS_FILE, RecordStore

    rounds = RecordStore.read(directory / RECORDS_FILE).rounds
    if not rounds:
        raise ConfigError(f"{directory} has no measured rounds to compare")
    base = load(baseline_path)
    first = rounds[0]
    prefill_gpu = next((r["prefill_gpu"] for r in rounds if r.get("prefill_gpu")), None)
    check_identity(base, {"backend": first["backend"], "gpu": first["gpu"], "model": first["model"],
                          "prefill_gpu": prefill_gpu})
    gate = ex.GateSettings()
    if expectations is not None:
        if not expectations.is_dir():
            raise ConfigError(f"--expectations {expectations}: not a directory; give the one holding the "
                              "<backend>-<gpu>-<model>.toml files, e.g. suites/expectations")
        file = ex.expectations_file(first["backend"], first["gpu"], first["model"], expectations, prefill_gpu)
        gate = ex.load(file).gate if file.exists() else gate
    return compare_run(base, rounds, analyze(rounds, first["model"], first["gpu"]), gate)
