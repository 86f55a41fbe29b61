"""The strategy comparison: every strategy on one setup over several seeds, with 95% CIs, as a table and JSON.

    cmp = compare("large", workload_spec("seed003", requests=500, rate=64.0), Study(32), seeds=range(3))
    print("\\n".join(cmp.table()))
    write_report([cmp], Path("cluster-report"))      # comparison.json + cluster_strategies.png

Strategies: ``baseline`` (seed 003's: no disaggregation, FIFO engines behind round robin = fixed agg-rr),
``static``, ``adaptive``, ``dynamo`` and ``offline`` (strategy.py, dynamic.py). Per seed it also runs the two
extreme splits, 1P(N-1)D and (N-1)P1D, on the judged trace: the worst static split is no better than the
worse of them, which is what the adaptive strategy is held to.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pytest_ppd.cluster.deployments import DeploymentSpec, parse_deployment
from pytest_ppd.cluster.metrics import mean_ci, summarize
from pytest_ppd.cluster.runner import simulate
from pytest_ppd.cluster.strategy import SeedReport, make_strategy, seed_report
from pytest_ppd.cluster.study import Outcome, Study
from pytest_ppd.cluster.workload import WorkloadSpec, generate

SETUPS = {"small": (8, 100), "medium": (16, 200), "large": (32, 500)}  # seed 003: GPUs, requests
COMPARED = ("baseline", "static", "adaptive", "dynamo", "offline")
ONLINE = ("adaptive", "dynamo")
CI = tuple[float, float, float]


@dataclass(frozen=True)
class Comparison:
    """One setup: each strategy's outcomes over the seeds, and the extreme static splits per seed."""

    setup: str
    workload: WorkloadSpec
    study: Study
    reports: dict[str, SeedReport]
    extremes: tuple[tuple[float, float], ...]  # per seed: goodput per GPU of 1P(N-1)D and (N-1)P1D
    wall_s: dict[str, float] = field(default_factory=dict)  # per strategy: wall seconds per seed, mean

    def ci(self, name: str, metric: str) -> CI:
        """(mean, low, high) over seeds of a Summary field, or of e2e_p99_s / ttft_p99_ms."""
        pick = {"e2e_p99_s": lambda s: s.e2e_ms.p99 / 1e3, "ttft_p99_ms": lambda s: s.ttft_ms.p99}
        get = pick.get(metric, lambda s: getattr(s, metric))
        return mean_ci([get(o.summary) for o in self.reports[name].outcomes])

    def versus_baseline(self, name: str, metric: str) -> CI:
        """(mean, low, high) over seeds of strategy / baseline - 1 on the same trace (paired), in %."""
        pick = {"e2e_p99_s": lambda s: s.e2e_ms.p99, "ttft_p99_ms": lambda s: s.ttft_ms.p99}
        get = pick.get(metric, lambda s: getattr(s, metric))
        pairs = zip(self.reports[name].outcomes, self.reports["baseline"].outcomes)
        return mean_ci([100 * (get(a.summary) / get(b.summary) - 1) for a, b in pairs])

    def resplit_fraction(self, name: str, seed_index: int) -> float:
        """Engine time out of service over (GPUs x span) in that run: what its re-splits cost in capacity."""
        o = self.reports[name].outcomes[seed_index]
        down = o.schedule.down_s if o.schedule else 0.0
        return min(down / (self.study.gpus * o.summary.span_s), 1.0) if o.summary.span_s else 0.0

    def table(self) -> list[str]:
        head = (f"{self.setup}: {self.study.gpus} GPUs, {self.workload.requests} requests at "
                f"{self.workload.rate:g} req/s, {len(self.extremes)} seeds; SLO TTFT {self.study.slo.ttft_ms:g} ms, "
                f"ITL {self.study.slo.itl_ms:g} ms; planner every {self.study.interval_s:g} s, re-split "
                f"{self.study.resplit.drain_s:g} s drain + {self.study.resplit.startup_s:g} s start-up")
        lines = [head, f"  {'strategy':<9} {'first seed ran':<24} {'SLO %':>6} {'goodput/GPU':>11} "
                       f"{'vs baseline % (95% CI)':>24} {'TTFT p99':>8} {'E2E p99 s':>9} {'vs baseline %':>13} "
                       f"{'req/s':>6} {'moves':>5} {'sims':>4} {'wall s':>6}"]
        for name, rep in self.reports.items():
            first = rep.outcomes[0]
            moves = sum(o.schedule.moves if o.schedule else 0 for o in rep.outcomes) / len(rep.outcomes)
            runs = sum(o.runs for o in rep.outcomes) / len(rep.outcomes)
            g = self.versus_baseline(name, "goodput_per_gpu") if "baseline" in self.reports else (math.nan,) * 3
            e = self.versus_baseline(name, "e2e_p99_s") if "baseline" in self.reports else (math.nan,) * 3
            lines.append(f"  {name:<9} {first.chosen[:24]:<24} {100 * self.ci(name, 'slo_attainment')[0]:>6.1f} "
                         f"{rep.goodput_per_gpu[0]:>11.3f} {f'{g[0]:+.2f} ({g[1]:+.2f}..{g[2]:+.2f})':>24} "
                         f"{self.ci(name, 'ttft_p99_ms')[0]:>8.0f} {self.ci(name, 'e2e_p99_s')[0]:>9.2f} "
                         f"{e[0]:>+13.1f} {self.ci(name, 'throughput_rps')[0]:>6.1f} {moves:>5.1f} {runs:>4.0f} "
                         f"{self.wall_s.get(name, math.nan):>6.2f}")
        return lines

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"setup": self.setup, "gpus": self.study.gpus, "requests": self.workload.requests,
                               "rate": self.workload.rate, "workload": self.workload.name,
                               "slo_ms": [self.study.slo.ttft_ms, self.study.slo.itl_ms],
                               "interval_s": self.study.interval_s, "drain_s": self.study.resplit.drain_s,
                               "startup_s": self.study.resplit.startup_s, "seeds": list(self.reports["baseline"].seeds)
                               if "baseline" in self.reports else [], "extremes_goodput_per_gpu": self.extremes,
                               "strategies": {}}
        for name, rep in self.reports.items():
            metrics = ("goodput_per_gpu", "slo_attainment", "ttft_p99_ms", "e2e_p99_s", "throughput_rps")
            out["strategies"][name] = {
                **{m: self.ci(name, m) for m in (*metrics, "busy_fraction")},
                **({f"{m}_vs_baseline_pct": self.versus_baseline(name, m) for m in metrics}
                   if "baseline" in self.reports else {}),
                "wall_s_per_seed": self.wall_s.get(name),
                "runs": [{"seed": s, "chosen": o.chosen, "simulations": o.runs,
                          "moves": o.schedule.moves if o.schedule else 0,
                          "down_s": o.schedule.down_s if o.schedule else 0.0,
                          "timeline": [[p.t_ns / 1e9, p.prefill, p.decode, p.moving] for p in o.schedule.timeline]
                          if o.schedule else [], "summary": o.summary.to_json()}
                         for s, o in zip(rep.seeds, rep.outcomes)]}
        return out


def compare(setup: str, workload: WorkloadSpec, study: Study, seeds: Sequence[int], *,
            strategies: Sequence[str] = COMPARED, profile: Path | None = None, search: str = "local") -> Comparison:
    """Every strategy on the workload drawn with each seed (static's search: ``search``)."""
    outcomes: dict[str, list[Outcome]] = {name: [] for name in strategies}
    wall: dict[str, float] = {name: 0.0 for name in strategies}
    extremes: list[tuple[float, float]] = []
    n = study.gpus
    for seed in seeds:
        trace = generate(workload, seed=seed)
        for name in strategies:
            started = time.perf_counter()
            strategy = make_strategy("fixed" if name == "baseline" else name, workload, seed, search=search,
                                     deployment=parse_deployment("agg", n), hardware=study.hardware, profile=profile)
            outcomes[name].append(strategy.run(trace, study))
            wall[name] += (time.perf_counter() - started) / len(seeds)
        low, high = (summarize(simulate(DeploymentSpec("pd", n, x, policy=study.policy), trace, study.hardware),
                               study.slo).goodput_per_gpu for x in (1, n - 1))
        extremes.append((low, high))
    reports = {name: seed_report(name, tuple(seeds), tuple(outs)) for name, outs in outcomes.items()}
    return Comparison(setup, workload, study, reports, tuple(extremes), wall)


def write_report(comparisons: Sequence[Comparison], out_dir: Path, suffix: str = "") -> list[Path]:
    """comparison{suffix}.json (every setup, strategy and seed, with the table) and
    cluster_strategies{suffix}.png; the paths written."""
    from pytest_ppd.cluster.plots import plot_strategies

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"comparison{suffix}.json"
    data = [{**c.to_json(), "table": c.table()} for c in comparisons]
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return [path, plot_strategies(comparisons, out_dir / f"cluster_strategies{suffix}.png")]


def merge_reports(out_dir: Path) -> Path | None:
    """One report from the per-setup ones in out_dir (each test may have run on another xdist worker):
    comparison.json (every setup, in SETUPS order) and report.md (their tables and plots); None: no parts."""
    parts = sorted(out_dir.glob("comparison-*.json"))
    if not parts:
        return None
    order = {name: i for i, name in enumerate(SETUPS)}
    data = sorted((entry for p in parts for entry in json.loads(p.read_text())),
                  key=lambda e: (order.get(e.get("setup"), len(order)), str(e.get("setup"))))
    (out_dir / "comparison.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# P:D strategies in virtual time", ""]
    for entry in data:
        setup = entry["setup"]
        lines += ["```", *entry["table"], "```", "", f"![{setup}](cluster_strategies-{setup}.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
