"""Report files of a results directory, rebuilt from records.jsonl alone (`ppd report DIR`).

    results.json   seed 002's shape: config, start/end time, summary by cache rate, results[]
    summary.csv    one row per point and path: bs, L, m, path, n_valid, n_invalid, median_ms, p10_ms, p90_ms,
                   regime, route
    report.md      setup and versions, regime map, latency tables with the floor, exponents, routing,
                   interference, invalid rounds, the baseline comparison
    *.png          plots (report/plots.py)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pytest_ppd.analysis.regime import regime_map
from pytest_ppd.analysis.stats import summarize
from pytest_ppd.analysis.study import Study, analyze
from pytest_ppd.baseline import write_atomic
from pytest_ppd.records import RECORDS_FILE, RecordStore, StoredRecords
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL


def point_table(rounds: list[dict[str, Any]], study: Study) -> pd.DataFrame:
    rows = []
    frame = pd.DataFrame(rounds)
    if frame.empty:
        return pd.DataFrame(columns=["bs", "L", "m", "path", "n_valid", "n_invalid", "median_ms", "p10_ms",
                                     "p90_ms", "regime", "route"])
    regimes = {(r.path, r.bs, r.L, r.m): r.regime for r in study.cells.itertuples()}
    routes = {(r.bs, r.L, r.m): r.oracle for r in study.truth.itertuples()} if not study.truth.empty else {}
    for (bs, L, m, path), grp in frame.groupby(["bs", "L", "m", "path"], sort=True):
        valid = grp[grp["valid"]]["batch_latency_ms"].tolist()
        s = summarize(valid) if valid else None
        rows.append({"bs": bs, "L": L, "m": m, "path": path, "n_valid": len(valid),
                     "n_invalid": int((~grp["valid"]).sum()), "median_ms": s.median if s else None,
                     "p10_ms": s.p10 if s else None, "p90_ms": s.p90 if s else None,
                     "ci_low_ms": s.ci_low if s else None, "ci_high_ms": s.ci_high if s else None,
                     "floor_ms": float(grp["floor_ms"].iloc[0]), "regime": regimes.get((path, bs, L, m)),
                     "route": routes.get((bs, L, m))})
    return pd.DataFrame(rows)


def results_json(stored: StoredRecords, points: pd.DataFrame) -> dict[str, Any]:
    """Seed 002's results.json: config, times, summary by cache rate, one entry per point and path."""
    rounds = stored.rounds
    starts = [r["started_at"] for r in rounds if r.get("started_at")]
    header = stored.header or {}
    results: list[dict[str, Any]] = []
    by_rate: dict[str, list[float]] = {"low": [], "mid": [], "high": []}
    for p in points.itertuples():
        rate = p.L / (p.L + p.m)
        results.append({"test_case": {"batch_size": int(p.bs), "context_length": int(p.L), "append_length": int(p.m),
                                      "cache_rate": rate, "path": p.path},
                        "metrics": {"ttft_ms": p.median_ms, "ttft_p10_ms": p.p10_ms, "ttft_p90_ms": p.p90_ms,
                                    "floor_ms": p.floor_ms, "n_valid": int(p.n_valid),
                                    "n_invalid": int(p.n_invalid), "regime": p.regime, "route": p.route}})
        if p.median_ms is not None and p.median_ms == p.median_ms:
            by_rate["low" if rate < 0.3 else "high" if rate >= 0.7 else "mid"].append(p.median_ms)
    first = rounds[0] if rounds else {}
    return {
        "config": {"run_id": header.get("run_id"), "backend": first.get("backend"), "model": first.get("model"),
                   "gpu": first.get("gpu"), "versions": first.get("versions", {})},
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(starts))) if starts else None,
        "end_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(max(starts))) if starts else None,
        "summary": {"total_tests": len(results), "by_cache_rate": {
            k: {"mean_ttft_ms": sum(v) / len(v) if v else None, "points": len(v)} for k, v in by_rate.items()}},
        "results": results,
    }


def _md_table(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    if frame.empty:
        return "_none_\n"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_md(stored: StoredRecords, points: pd.DataFrame, study: Study, comparison: list[str] | None) -> str:
    rounds = stored.rounds
    first = rounds[0] if rounds else {}
    prefill = next((r["prefill_gpu"] for r in rounds if r.get("prefill_gpu")), None)
    gpus = f"**{first.get('gpu')}**" + (f" (prefill on **{prefill}**)" if prefill else "")
    out = ["# pytest-ppd report\n",
           f"Backend **{first.get('backend')}**, model **{first.get('model')}**, GPU {gpus}; "
           f"versions {json.dumps(first.get('versions', {}))}. {len(rounds)} rounds, "
           f"{sum(r['valid'] for r in rounds)} valid.\n",
           "Every number below comes from valid rounds only: cache state proven per request, no errors, "
           "not below the physical floor, within the KV pool.\n"]
    for path in ("local", "remote"):
        table = regime_map(study.cells, path)
        if not table.empty:
            out.append(f"## Regime map [{path}]\n\nO overhead, T transition, C compute (elasticity in m).\n")
            out.append(_md_table(table.reset_index().fillna("")))
    out.append("## Latency (median ms, p10..p90) next to the physical floor\n")
    for bs, grp in points.groupby("bs"):
        view = grp.assign(latency=[f"{a:.1f} ({b:.1f}..{c:.1f})" if a == a and a is not None else "-"
                                   for a, b, c in zip(grp["median_ms"], grp["p10_ms"], grp["p90_ms"])])
        out.append(f"### BS = {bs}\n")
        out.append(_md_table(view[["L", "m", "path", "latency", "floor_ms", "n_valid", "n_invalid", "regime"]]))
    out.append("## Scaling exponents (95% bootstrap CI) and seed 000's endpoint slope\n")
    out.append(_md_table(study.fits, ".3f"))
    out.append("## Routing\n\nPer point, the route measured faster (oracle):\n")
    out.append(_md_table(study.truth))
    for split, table in study.policies.items():
        out.append(f"\nPolicies on {split}:\n\n")
        out.append(_md_table(table))
    inter = [o for o in stored.other if o.get("kind") == "interference"]
    out.append("\n## Interference (background decode streams, p99 ITL)\n")
    out.append(_md_table(pd.DataFrame(inter).drop(columns=["kind", "run_id"], errors="ignore")) if inter
               else "_not measured in this run_\n")
    bad = [r for r in rounds if not r["valid"]]
    out.append(f"\n## Invalid rounds ({len(bad)}), kept in records and excluded from statistics\n")
    for r in bad[:50]:
        out.append(f"- bs{r['bs']}-L{r['L']}-m{r['m']}-{r['path']} round {r['round']}: "
                   f"{'; '.join(r['invalid_reasons'][:3])}\n")
    if comparison is not None:
        out.append("\n## Baseline comparison\n")
        out.extend(f"- {line}\n" for line in comparison) if comparison else out.append("No regressions.\n")
    out.append("\n## Plots\n\n![latency](latency_vs_m.png)\n![regimes](regime_map.png)\n"
               "![routing](routing_map.png)\n![local vs remote](local_vs_remote.png)\n")
    return "".join(out)


def build_report(results_dir: Path, model: Any = None, gpu: Any = None,
                 comparison: list[str] | None = None) -> list[Path]:
    """Write results.json, summary.csv, report.md and the plots; returns their paths."""
    from pytest_ppd.report.plots import write_plots

    stored = RecordStore.read(Path(results_dir) / RECORDS_FILE)
    first = stored.rounds[0] if stored.rounds else {}
    study = analyze(stored.rounds, model or first.get("model", DEFAULT_MODEL), gpu or first.get("gpu", DEFAULT_GPU))
    points = point_table(stored.rounds, study)
    results_dir = Path(results_dir)
    written = []
    for name, text in (("results.json", json.dumps(results_json(stored, points), indent=1, default=str) + "\n"),
                       ("summary.csv", points[["bs", "L", "m", "path", "n_valid", "n_invalid", "median_ms", "p10_ms",
                                               "p90_ms", "regime", "route"]].to_csv(index=False)),
                       ("report.md", report_md(stored, points, study, comparison))):
        write_atomic(results_dir / name, text)
        written.append(results_dir / name)
    written += write_plots(results_dir, points, study)
    return written
