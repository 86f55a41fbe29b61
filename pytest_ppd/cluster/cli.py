"""`ppd cluster`: one cluster run in virtual time (wired into pytest_ppd/cli.py by its owner).

    parser = sub.add_parser("cluster", help=...); add_arguments(parser); parser.set_defaults(func=cmd_cluster)
    ppd cluster --gpus 8 --strategy static --workload chat --rate 12 --requests 200 --seeds 3
    ppd cluster --gpus 32 --requests 500 --rate 64 --seeds 3 --report cluster-report   # every strategy, compared

Prints a compact table (one row per run; for ``static`` also what it tried on its sample) and appends
every row as one JSON line to ``--out``. ``--report DIR`` runs every strategy instead (compare.py) and writes
the comparison there (comparison.json, cluster_strategies.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from pytest_ppd.cluster.deployments import Hardware, parse_deployment
from pytest_ppd.cluster.metrics import Slo, Summary, mean_ci
from pytest_ppd.cluster.runner import watching
from pytest_ppd.cluster.routers import POLICIES, RULES
from pytest_ppd.cluster.compare import SETUPS, compare, write_report
from pytest_ppd.cluster.elastic import Resplit
from pytest_ppd.cluster.planners import PREDICTORS
from pytest_ppd.cluster.strategy import SEARCHES, STRATEGIES, Outcome, StaticBest, Study, make_strategy
from pytest_ppd.cluster.trace import read_trace, write_trace
from pytest_ppd.cluster.workload import ARRIVALS, WORKLOADS, generate, workload_spec
from pytest_ppd.errors import ConfigError
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_LINK, DEFAULT_MODEL

T = TypeVar("T")


def _typed(convert: Callable[[str], T], what: str) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if isinstance(value, (int, float)) and not value > 0:
            raise argparse.ArgumentTypeError(f"'{text}': must be > 0")
        return value
    parse.__name__ = what
    return parse


_POS_INT, _POS_FLOAT = _typed(int, "a whole number"), _typed(float, "a number")


def _seconds(text: str) -> float:
    """A duration >= 0 s (a re-split may cost nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"'{text}': must be >= 0 s")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `ppd cluster`."""
    parser.add_argument("--gpus", type=_POS_INT, default=None, metavar="N",
                        help="GPUs, one engine each (default: 8, or x + y of an xPyD --deployment)")
    parser.add_argument("--strategy", default="fixed", choices=STRATEGIES,
                        help="fixed: run --deployment; static: the best static split for a sample; adaptive, "
                        "dynamo (SLA planner): re-split every --interval-s; offline: hindsight upper bound "
                        "(default: fixed)")
    parser.add_argument("--search", default="all", choices=SEARCHES,
                        help="static: try every split, or hill-climb from the sample's demand split (default: all)")
    parser.add_argument("--interval-s", type=_POS_FLOAT, default=Study(1).interval_s, metavar="S",
                        help="planner interval (adaptive, dynamo, offline windows) (default: %(default)s)")
    parser.add_argument("--drain-s", type=_seconds, default=Resplit().drain_s, metavar="S",
                        help="least time a moved engine drains before it stops (default: %(default)s)")
    parser.add_argument("--startup-s", type=_seconds, default=Resplit().startup_s, metavar="S",
                        help="restart of a moved engine in its new role (default: %(default)s)")
    parser.add_argument("--predictor", default="constant", choices=sorted(PREDICTORS),
                        help="dynamo's load predictor (default: constant)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="planners' profile of the engine: reused or measured here (default: a temporary dir)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="run every strategy on this setup and write the comparison (JSON + plot) to DIR")
    parser.add_argument("--deployment", default="agg", metavar="agg|xPyD",
                        help="aggregated, or a static split such as 2P6D (default: agg)")
    parser.add_argument("--router", default="rr", choices=sorted(POLICIES), help="router policy (default: rr)")
    parser.add_argument("--rule", default=None, metavar="|".join(RULES) + "[:T]",
                        help="conditional disaggregation on an xPyD split (default: none, every prefill REMOTE)")
    parser.add_argument("--workload", default="seed003", choices=sorted(WORKLOADS), help="(default: seed003)")
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="replay a Mooncake JSONL trace instead of drawing --workload")
    parser.add_argument("--write-trace", type=Path, default=None, metavar="FILE",
                        help="also write the drawn workload (first seed) as a Mooncake JSONL trace")
    parser.add_argument("--rate", type=_POS_FLOAT, default=None, metavar="REQ/S",
                        help="target request rate, sessions' turns included (default: the workload's)")
    parser.add_argument("--arrival", default=None, choices=ARRIVALS, help="(default: poisson)")
    parser.add_argument("--cv", type=_POS_FLOAT, default=None, help="gamma arrivals' CV of gaps (default: 1)")
    parser.add_argument("--requests", type=_POS_INT, default=None, metavar="N", help="(default: 100)")
    parser.add_argument("--duration", type=_POS_FLOAT, default=None, metavar="S",
                        help="instead of --requests: rate x duration requests")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    parser.add_argument("--seeds", type=_POS_INT, default=1, metavar="K",
                        help="runs with seeds seed..seed+K-1, reported with 95%% CIs (default: 1)")
    parser.add_argument("--ttft-slo-ms", type=_POS_FLOAT, default=Slo().ttft_ms, help="(default: %(default)s)")
    parser.add_argument("--itl-slo-ms", type=_POS_FLOAT, default=Slo().itl_ms, help="(default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"(default: {DEFAULT_GPU})")
    parser.add_argument("--link", default=DEFAULT_LINK, help=f"P/D KV link (default: {DEFAULT_LINK})")
    parser.add_argument("--link-sharing", choices=("fair", "fifo"), default="fair",
                        help="concurrent KV hand-offs into a decode engine share its link's bandwidth (fair) or "
                             "queue for it (fifo) (default: fair)")
    parser.add_argument("--jobs", type=_POS_INT, default=None, metavar="N",
                        help="worker processes for a search's simulations (static, offline); 1: none (default: "
                             "$PPD_JOBS, else the CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr (default: one on a terminal)")
    parser.add_argument("-o", "--out", type=Path, default=Path("cluster.jsonl"),
                        help="results, one JSON line per row, appended (default: cluster.jsonl)")


def _fmt(v: float, digits: int = 0) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


HEADER = (f"{'run':<32} {'ok':>9} {'TTFT p50/p90/p99 ms':>20} {'ITL p50/p99':>11} {'E2E p99 s':>9} "
          f"{'SLO%':>5} {'good/GPU':>8} {'local%':>6} {'KV GB':>6} {'busy%':>5}")


def row(name: str, s: Summary) -> str:
    """One run as a table row (ms and %, as an operator reads them)."""
    t, i = s.ttft_ms, s.itl_ms
    ttft = f"{_fmt(t.p50)}/{_fmt(t.p90)}/{_fmt(t.p99)}"
    return (f"{name[:32]:<32} {f'{s.completed}/{s.requests}':>9} {ttft:>20} "
            f"{f'{_fmt(i.p50, 1)}/{_fmt(i.p99, 1)}':>11} {_fmt(s.e2e_ms.p99 / 1e3, 2):>9} "
            f"{100 * s.slo_attainment:>5.1f} {s.goodput_per_gpu:>8.3f} {100 * s.local_fraction:>6.1f} "
            f"{s.kv_bytes / 1e9:>6.2f} {100 * s.busy_fraction:>5.1f}")


def _line(kind: str, seed: int, outcome: Outcome, s: Summary, extra: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "strategy": outcome.strategy, "chosen": outcome.chosen, "seed": seed, **extra,
            **s.to_json()}


def cmd_cluster(args: argparse.Namespace) -> int:
    """Run, print the table, append the JSON lines; 0, or 2 with one line on bad input."""
    try:
        return _cluster(args)
    except ConfigError as exc:
        print(f"ppd cluster: error: {exc}", file=sys.stderr)
        return 2


def _cluster(args: argparse.Namespace) -> int:
    if args.jobs is not None:
        os.environ["PPD_JOBS"] = str(args.jobs)  # pool.jobs() reads it
    if args.requests is not None and args.duration is not None:
        raise ConfigError("give --requests or --duration, not both")
    fixed, aggregated = args.strategy == "fixed", args.deployment.strip().lower() == "agg"
    if not fixed and (args.rule or not aggregated):
        raise ConfigError("--deployment and --rule go with --strategy fixed; static tries every split itself")
    spec = parse_deployment(args.deployment, args.gpus or (8 if aggregated else None), policy=args.router,
                            rule=args.rule) if fixed else None
    gpus = spec.gpus if spec else (args.gpus or 8)
    workload = workload_spec(args.workload, rate=args.rate, arrival=args.arrival, cv=args.cv, seed=args.seed)
    workload = replace(workload, requests=args.requests or (max(1, round(workload.rate * args.duration))
                                                            if args.duration else workload.requests))
    hw = Hardware(args.model, args.gpu, args.link, link_sharing=args.link_sharing)
    study = Study(gpus, Slo(args.ttft_slo_ms, args.itl_slo_ms), hw,
                  policy=args.router, interval_s=args.interval_s, resplit=Resplit(args.drain_s, args.startup_s))
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.trace is not None and (len(seeds) > 1 or args.report):
        raise ConfigError("a --trace is one workload: --seeds must be 1, and --report compares drawn workloads")
    if args.report is not None:
        return _report(args, workload, study, seeds)
    extra = {"rate": workload.rate, "arrival": workload.arrival, "slo_ms": [args.ttft_slo_ms, args.itl_slo_ms],
             "model": args.model, "gpu": args.gpu, "link": args.link}
    lines: list[dict[str, Any]] = []
    print(f"ppd cluster: {args.strategy} on {gpus} x {args.gpu} ({args.model}), workload "
          f"{args.trace or workload.name} at {workload.rate:g} req/s, {workload.requests} requests, "
          f"SLO TTFT {args.ttft_slo_ms:g} ms / ITL {args.itl_slo_ms:g} ms")
    print(HEADER)
    outcomes = []
    for seed in seeds:
        trace = read_trace(args.trace) if args.trace else generate(workload, seed=seed)
        if args.write_trace is not None and seed == seeds[0]:
            write_trace(trace, args.write_trace)
        strategy = (StaticBest(trace) if args.trace and args.strategy == "static"  # a trace has no other seed
                    else make_strategy(args.strategy, workload, seed, deployment=spec, search=args.search,
                                       hardware=study.hardware, profile=args.profile, predictor=args.predictor,
                                       sample=trace if args.trace else None))
        print(f"  seed {seed}: {args.strategy} ...", file=sys.stderr, flush=True)
        bar = ProgressBar(f"seed {seed} {args.strategy}") if sys.stderr.isatty() and not args.quiet else None
        try:
            with watching(bar):
                outcome = strategy.run(trace, study)
        finally:
            if bar is not None:
                bar.clear()
        outcomes.append(outcome)
        for s in outcome.considered:
            print(row(f"  sample {s.deployment}", s))
            lines.append(_line("candidate", seed, outcome, s, extra))
        print(row(f"seed {seed} {outcome.chosen}", outcome.summary))
        lines.append(_line("run", seed, outcome, outcome.summary, extra))
    if len(outcomes) > 1:
        for metric in ("goodput_per_gpu", "slo_attainment"):
            mean, lo, hi = mean_ci([getattr(o.summary, metric) for o in outcomes])
            print(f"{metric}: {mean:.3f} (95% CI {lo:.3f} .. {hi:.3f}, {len(outcomes)} seeds)")
            lines.append({"kind": "ci", "strategy": args.strategy, "metric": metric, "mean": mean, "low": lo,
                          "high": hi, "seeds": seeds, **extra})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    wall = sum(o.summary.wall_s for o in outcomes)
    print(f"{len(lines)} rows appended to {args.out}; last run simulated "
          f"{outcomes[-1].summary.requests / max(outcomes[-1].summary.wall_s, 1e-9):.0f} requests per wall second "
          f"({wall:.2f} s of runs)")
    return 0


class ProgressBar:
    """One line on stderr, redrawn at most 10 times a second: the run under way (a search's runs in worker
    processes are not shown), its requests answered, virtual and wall time, and the wall time left at this pace."""

    WIDTH = 24

    def __init__(self, label: str) -> None:
        self.label, self.runs, self.last, self.started, self.drawn = label, 0, -1, 0.0, 0.0
        self.width = 0

    def __call__(self, done: int, total: int, now_ns: int) -> None:
        now = time.monotonic()
        new = done <= self.last or self.runs == 0  # a new replay (each reports 0 answered first): drawn at once
        if new:
            self.runs, self.started = self.runs + 1, now
        self.last = done
        if not new and done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        wall = now - self.started
        full = round(self.WIDTH * done / max(total, 1))
        left = f", ~{wall * (total - done) / done:.0f} s left" if 0 < done < total else ""
        line = (f"  {self.label} run {self.runs} [{'#' * full}{'.' * (self.WIDTH - full)}] {done:,}/{total:,} "
                f"requests, {now_ns / 1e9:,.1f} s virtual in {wall:.1f} s{left}")
        line = line[: shutil.get_terminal_size().columns - 1]  # one row, or \r redraws on a new one
        print(f"\r{line:<{self.width}}", end="", file=sys.stderr, flush=True)
        self.width = max(self.width, len(line))

    def clear(self) -> None:
        if self.width:
            print(f"\r{'':<{self.width}}\r", end="", file=sys.stderr, flush=True)


def _report(args: argparse.Namespace, workload: Any, study: Study, seeds: list[int]) -> int:
    """Every strategy on the setup, the table printed, comparison.json and the plot written to --report."""
    print(f"ppd cluster: comparing strategies on {study.gpus} x {args.gpu} ({args.model}), {workload.name} at "
          f"{workload.rate:g} req/s, {workload.requests} requests, seeds {seeds[0]}..{seeds[-1]}", file=sys.stderr)
    setup = next((k for k, v in SETUPS.items() if v == (study.gpus, workload.requests)), "custom")
    result = compare(setup, workload, study, seeds, profile=args.profile, search=args.search)
    print("\n".join(result.table()))
    for path in write_report([result], args.report):
        print(f"wrote {path}")
    return 0
