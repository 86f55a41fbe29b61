"""The end-of-run terminal summary: measured points, infeasible points, invalid rounds, the analysis.

It reads a frozen RunSummary (the session builds it once everything is measured) and never measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ppd.client.runner import PointOutcome
from pytest_ppd.grid import GridPoint


@dataclass(frozen=True)
class RunSummary:
    """What a run measured and concluded, for the terminal summary."""

    outcomes: tuple[PointOutcome, ...]
    infeasible: tuple[tuple[GridPoint, str, str], ...]
    notes: tuple[str, ...]
    study: Any = None  # analysis.study.Study, when the analysis ran
    records_path: Path | None = None


def _fmt(value: float | None, width: int = 9) -> str:
    return f"{value:{width}.1f}" if value is not None else " " * (width - 1) + "-"


def write_summary(tr: Any, session: RunSummary) -> None:
    tr.write_sep("=", "pytest-ppd summary")
    rows = sorted(session.outcomes, key=lambda o: (o.point, o.path))
    if rows:
        tr.write_line(f"{'point':<22} {'path':<6} {'valid':>5} {'invalid':>7} {'median ms':>9} "
                      f"{'p10':>9} {'p90':>9} {'CI ±%':>6} {'floor ms':>9}")
        for o in rows:
            s = o.summary
            floor = o.records[0].floor_ms if o.records else None
            ci = f"{s.ci_rel_width * 50:6.1f}" if s else "     -"
            tr.write_line(f"{o.point.id:<22} {o.path:<6} {len(o.valid):>5} {len(o.invalid):>7} "
                          f"{_fmt(s.median if s else None)} {_fmt(s.p10 if s else None)} "
                          f"{_fmt(s.p90 if s else None)} {ci} {_fmt(floor)}")
    invalid = [(o, r) for o in rows for r in o.invalid]
    if invalid:
        tr.write_line(f"invalid rounds (kept in records, excluded from statistics): {len(invalid)}")
        for o, r in invalid[:10]:
            tr.write_line(f"  {o.point.id}-{o.path} round {r['round']}: {'; '.join(r['invalid_reasons'][:3])}")
    if session.infeasible:
        tr.write_line(f"infeasible points (KV pool too small to keep the context cached): {len(session.infeasible)}")
        for _, _, why in session.infeasible[:20]:
            tr.write_line(f"  {why}")
    if session.study is not None:
        write_study(tr, session.study)
    for line in session.notes:
        tr.write_line(line)
    if session.records_path is not None:
        tr.write_line(f"records: {session.records_path}")


def write_study(tr: Any, study: Any) -> None:
    from pytest_ppd.analysis.regime import regime_map

    for path in ("local", "remote"):
        table = regime_map(study.cells, path)
        if not table.empty:
            tr.write_line(f"regime map [{path}] (O overhead, T transition, C compute; by elasticity in m):")
            for line in table.to_string().splitlines():
                tr.write_line("  " + line)
    if not study.fits.empty:
        tr.write_line("scaling exponents (log-log slope of latency on m, 95% bootstrap CI; seed's endpoint slope):")
        for r in study.fits.itertuples():
            tr.write_line(f"  {r.path:<6} bs{r.bs:<3} L{r.L:<6} {r.exponent:6.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]  "
                          f"endpoint {r.endpoint_slope:.3f}  n={r.n}")
    for split, table in study.policies.items():
        tr.write_line(f"routing policies on {split} ({int(table['points'].iloc[0])} points; "
                      "regret vs per-point oracle):")
        for r in table.itertuples():
            tr.write_line(f"  {r.policy:<22} accuracy {r.accuracy:6.1%}  mean regret {r.mean_regret_ms:9.2f} ms  "
                          f"max {r.max_regret_ms:9.2f} ms")
