"""Expectations as data: `suites/expectations/<backend>-<gpu>-<model>.toml`.

A file states what the physics predicts, as ranges, never as measured numbers::

    [[cells]]                         # per cell: the regime of the segment m_prev -> m
    when = "bs * m_prev >= 8192"      # a pandas query over bs, L, m, m_prev, path
    regime = "compute"

    [[rows]]                          # per (path, bs, L) row: the exponent's 95% CI must lie in the range
    when = "bs >= 32"
    exponent = [0.7, 1.2]

    [routing]
    route = "local"                   # the measured-faster route at every point
    router_regret_at_most_best_fixed = true   # or router_regret_below_every_fixed (strict, whole grid)

    [[routes]]                        # or per region: the faster route where `when` holds (bs, L, m)
    when = "m >= L / 2 and bs * m >= 2048"
    route = "remote"

    [baseline]                        # the regression gate against --ppd-baseline (all optional)
    tolerance = 0.10                  # a slowdown beyond this (and significant) is a regression
    exponent_tolerance = 0.10         # an exponent must move more than this, CIs apart
    points = { "bs32-L4096-m2048-remote" = 0.2 }   # per-point tolerance overrides

``check_*`` return one message per failed expectation, with expected vs
measured, the CI and the records behind it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pytest_ppd.analysis.regime import COMPUTE_FROM, OVERHEAD_BELOW, REGIME_MARGIN, REGIMES
from pytest_ppd.analysis.policies import clearly_faster
from pytest_ppd.analysis.scaling import fit_exponent
from pytest_ppd.errors import ConfigError


class NoExpectationsFile(ConfigError):
    """This backend/GPU/model has no expectations file (the gate then uses its defaults)."""


@dataclass(frozen=True)
class GateSettings:
    """The [baseline] section: None means the baseline module's default."""

    tolerance: float | None = None
    exponent_tolerance: float | None = None
    points: dict[str, float | None] = field(default_factory=dict)

    def tolerance_for(self, key: str) -> float | None:
        return self.points.get(key, self.tolerance)


@dataclass(frozen=True)
class Expectations:
    path: Path
    cells: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=dict)
    gate: GateSettings = field(default_factory=GateSettings)
    routes: list[dict[str, Any]] = field(default_factory=list)


def expectations_file(backend: str | None, gpu: str, model: str, directory: Path,
                      prefill_gpu: str | None = None) -> Path:
    """sim-H100-SXM-Llama-3.1-8B.toml for the served sim, virtual-... for the virtual one;
    H100-SXM-Llama-3.1-8B.toml for measured hardware; ...-prefill-B200.toml when P runs on other hardware."""
    prefix = f"{backend}-" if backend in ("sim", "virtual") else ""
    suffix = f"-prefill-{prefill_gpu}" if prefill_gpu and prefill_gpu != gpu else ""
    return directory / f"{prefix}{gpu}-{model}{suffix}.toml"


def load(path: Path) -> Expectations:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NoExpectationsFile(f"no expectations file {path}; write one (see suites/expectations/) or pick a "
                          "--ppd-gpu/--ppd-model that has one") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    cells, rows, routing = data.get("cells", []), data.get("rows", []), data.get("routing", {})
    for i, rule in enumerate(cells):
        if rule.get("regime") not in REGIMES or not isinstance(rule.get("when"), str):
            raise ConfigError(f"{path}: cells[{i}] needs when = \"...\" and regime in {REGIMES}")
    for i, rule in enumerate(rows):
        rng = rule.get("exponent")
        if not (isinstance(rng, list) and len(rng) == 2 and rng[0] <= rng[1]):
            raise ConfigError(f"{path}: rows[{i}].exponent must be [low, high]")
    if routing.get("route") not in (None, "local", "remote"):
        raise ConfigError(f"{path}: routing.route must be 'local' or 'remote'")
    routes = data.get("routes", [])
    for i, rule in enumerate(routes):
        if rule.get("route") not in ("local", "remote") or not isinstance(rule.get("when"), str):
            raise ConfigError(f"{path}: routes[{i}] needs when = \"...\" and route = 'local' or 'remote'")
    return Expectations(path, cells, rows, routing, _gate(path, data.get("baseline", {})), routes)


def _gate(path: Path, section: Any) -> GateSettings:
    def fraction(value: Any, name: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10:
            raise ConfigError(f"{path}: baseline.{name} must be a number in [0, 10), e.g. 0.10 for 10%")
        return float(value)

    if not isinstance(section, dict) or not isinstance(section.get("points", {}), dict):
        raise ConfigError(f"{path}: [baseline] must be a table, its points a table of point id = tolerance")
    unknown = set(section) - {"tolerance", "exponent_tolerance", "points"}
    if unknown:
        raise ConfigError(f"{path}: unknown [baseline] key(s) {sorted(unknown)}; "
                          "accepted: tolerance, exponent_tolerance, points")
    points = {str(k): fraction(v, f"points.{k}") for k, v in section.get("points", {}).items()}
    return GateSettings(fraction(section.get("tolerance"), "tolerance"),
                        fraction(section.get("exponent_tolerance"), "exponent_tolerance"), points)


def _select(frame: pd.DataFrame, when: str, where: str) -> pd.DataFrame:
    try:
        return frame.query(when) if when.strip() else frame
    except Exception as exc:  # pandas raises many types for a bad expression
        raise ConfigError(f"{where}: cannot evaluate when = {when!r} ({exc})") from None


REGIME_RANGES = {"overhead": (-math.inf, OVERHEAD_BELOW), "transition": (OVERHEAD_BELOW, COMPUTE_FROM),
                 "compute": (COMPUTE_FROM, math.inf)}


def elasticity_ci(rounds: pd.DataFrame, path: str, bs: int, L: int, m_prev: int, m: int) -> tuple[float, float] | None:
    """95% CI of the elasticity between two cells: the two-m scaling exponent, bootstrapped from rounds."""
    at = rounds[(rounds["path"] == path) & (rounds["bs"] == bs) & (rounds["L"] == L) & rounds["m"].isin([m_prev, m])]
    if min((at["m"] == m_prev).sum(), (at["m"] == m).sum()) < 2:
        return None
    fit = fit_exponent(at["m"].tolist(), at["batch_latency_ms"].tolist())
    return fit.ci_low, fit.ci_high


def check_cells(exp: Expectations, cells: pd.DataFrame, records_file: str,
                rounds: pd.DataFrame | None = None) -> list[str]:
    """Every cell a rule selects must show the rule's regime. With `rounds`, a cell contradicts the rule
    only when the 95% CI of its elasticity misses the rule's range by more than REGIME_MARGIN: at tiny m
    on a loaded host a 14 ms append can read 18 ms for a few rounds in a row, and that is the host, not
    another regime."""
    table = cells.sort_values(["path", "bs", "L", "m"]).copy()
    table["m_prev"] = table.groupby(["path", "bs", "L"])["m"].shift(1)
    table["median_prev"] = table.groupby(["path", "bs", "L"])["median_ms"].shift(1)
    table["n_prev"] = table.groupby(["path", "bs", "L"])["n"].shift(1)
    table = table.dropna(subset=["m_prev"])
    failures = []
    for i, rule in enumerate(exp.cells):
        for r in _select(table, rule["when"], f"{exp.path.name} cells[{i}]").itertuples():
            if r.regime == rule["regime"]:
                continue
            ci = elasticity_ci(rounds, r.path, r.bs, r.L, int(r.m_prev), r.m) if rounds is not None else None
            low, high = REGIME_RANGES[rule["regime"]]
            if ci is not None and ci[1] >= low - REGIME_MARGIN and ci[0] < high + REGIME_MARGIN:
                continue  # the CI reaches (within the margin) the expected range: not a contradiction
            evidence = f", 95% CI {ci[0]:.3f}..{ci[1]:.3f}" if ci is not None else ""
            failures.append(
                f"bs{r.bs}-L{r.L} m {int(r.m_prev)}->{r.m} [{r.path}]: expected {rule['regime']} "
                f"({rule['when']}), measured {r.regime} with elasticity {r.elasticity:.3f}{evidence} "
                f"(medians {r.median_prev:.2f} -> {r.median_ms:.2f} ms over {int(r.n_prev)} and {r.n} valid "
                f"rounds; records: {records_file})")
    return failures


def check_rows(exp: Expectations, fits: pd.DataFrame, records_file: str) -> list[str]:
    """Every row a rule selects must have its exponent's 95% CI inside the rule's range."""
    failures = []
    for i, rule in enumerate(exp.rows):
        low, high = rule["exponent"]
        for r in _select(fits, rule.get("when", ""), f"{exp.path.name} rows[{i}]").itertuples():
            if not (low <= r.ci_low and r.ci_high <= high):
                failures.append(
                    f"bs{r.bs}-L{r.L} [{r.path}]: expected exponent in [{low}, {high}] ({rule.get('when', 'all')}), "
                    f"measured {r.exponent:.3f} with 95% CI [{r.ci_low:.3f}, {r.ci_high:.3f}] over m "
                    f"{r.m_min}..{r.m_max}, n={r.n} rounds (records: {records_file})")
    return failures


def check_routing(exp: Expectations, truth: pd.DataFrame, evaluation: dict[str, pd.DataFrame],
                  records_file: str, rounds: pd.DataFrame | None = None) -> list[str]:
    """With `rounds`, a point contradicts the expected route only if the other route is faster beyond
    noise: where both are within a few percent (compute-bound appends whose KV transfer overlaps the
    prefill) the faster one changes from run to run, and neither answer is wrong."""
    failures = []
    rules = list(exp.routes)
    if exp.routing.get("route"):
        rules.insert(0, {"when": "", "route": exp.routing["route"]})
    for i, rule in enumerate(rules):
        route, when = rule["route"], rule["when"]
        for r in _select(truth, when, f"{exp.path.name} routes[{i}]").itertuples():
            if r.oracle == route:
                continue
            beyond_noise, evidence = clearly_faster(rounds, r.bs, r.L, r.m, r.oracle)
            if beyond_noise:
                failures.append(f"bs{r.bs}-L{r.L}-m{r.m}: expected {route} to be faster ({when or 'everywhere'}), "
                                f"measured local {r.local_ms:.2f} ms vs remote {r.remote_ms:.2f} ms{evidence} "
                                f"(records: {records_file})")
    strict = bool(exp.routing.get("router_regret_below_every_fixed"))
    if strict or exp.routing.get("router_regret_at_most_best_fixed"):
        for split, table in evaluation.items():
            router = table[table["policy"] == "append-router"].iloc[0]
            fixed = table[table["policy"] != "append-router"]
            best = fixed.sort_values("mean_regret_ms").iloc[0]
            if router["mean_regret_ms"] > best["mean_regret_ms"] + 1e-9 or (
                    strict and split == "grid" and router["mean_regret_ms"] >= best["mean_regret_ms"]):
                relation = "not below" if strict else ">"
                failures.append(f"{split}: append-router mean regret {router['mean_regret_ms']:.3f} ms {relation} "
                                f"best fixed rule {best['policy']} {best['mean_regret_ms']:.3f} ms over "
                                f"{int(best['points'])} points")
    return failures
