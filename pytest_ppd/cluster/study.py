"""What strategies compete in and report: the study's setting, an outcome, the ranking, and a local search.

    study = Study(gpus=8, slo=Slo(ttft_ms=500, itl_ms=50))
    best, tried = hill_climb(lambda x: summarize(simulate(DeploymentSpec("pd", 8, x), trace), study.slo), start=3,
                             lo=1, hi=7)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from pytest_ppd.cluster.deployments import Hardware
from pytest_ppd.cluster.elastic import Resplit, Schedule
from pytest_ppd.cluster.metrics import Slo, Summary
from pytest_ppd.cluster.runner import Run
from pytest_ppd.cluster.workload import Trace


@dataclass(frozen=True)
class Study:
    """The fixed setting strategies compete in: N GPUs of one hardware, one router policy, the SLOs, and for
    strategies over time the planner's interval and what a re-split costs."""

    gpus: int
    slo: Slo = field(default_factory=Slo)
    hardware: Hardware = field(default_factory=Hardware)
    policy: str = "rr"
    interval_s: float = 5.0
    resplit: Resplit = field(default_factory=Resplit)


@dataclass(frozen=True)
class Outcome:
    """What a strategy ran and how it did; ``considered``: what it tried, if anything; ``schedule``: P:D over
    time for strategies that re-split; ``runs``: simulations it took (its search included)."""

    strategy: str
    chosen: str
    summary: Summary
    considered: tuple[Summary, ...] = ()
    schedule: Schedule | None = None
    runs: int = 1
    ttft_ms: tuple[float, ...] = ()  # every answered request's TTFT, sorted (for latency CDFs)


def ttfts(run: Run) -> tuple[float, ...]:
    """The TTFTs (ms) of the requests a run answered in full, sorted."""
    return tuple(sorted(r.ttft_ns / 1e6 for r in run.results if r.ok and r.ttft_ns is not None))


class Strategy(Protocol):
    """Replays a trace on a study's GPUs, allocated its way."""

    name: str

    def run(self, trace: Trace, study: Study) -> Outcome: ...


def headroom(s: Summary) -> float:
    """How close the run's P90s come to the SLOs: max(TTFT P90 / TTFT SLO, ITL P90 / ITL SLO); lower is better."""
    return max(s.ttft_ms.p90 / s.slo_ttft_ms, s.itl_ms.p90 / s.slo_itl_ms)


def rank_key(s: Summary) -> tuple[float, float]:
    """Higher is better: SLO attainment, then the lower P90-to-SLO ratio (more headroom)."""
    return s.slo_attainment, -headroom(s)


def better(a: Summary, b: Summary, margin: float = 0.02) -> bool:
    """a beats b: higher SLO attainment, or the same and headroom lower by more than margin (relative) --
    a neighbouring split within noise of the current one is no reason to move."""
    if a.slo_attainment != b.slo_attainment:
        return a.slo_attainment > b.slo_attainment
    return headroom(a) < headroom(b) * (1 - margin)


def hill_climb(evaluate: Callable[[int], Summary], start: int, lo: int, hi: int,
               ahead: Callable[[list[int]], None] | None = None) -> tuple[int, dict[int, Summary]]:
    """Local search over x in lo..hi: from start, move to the better neighbour (``better``; the lower x
    first) while one is better; the x it stopped at and every x it evaluated. ``ahead``: told, at each x,
    what it may evaluate next (where it stands and both neighbours; pool.Lookahead.want)."""
    seen: dict[int, Summary] = {}

    def at(x: int) -> Summary:
        if x not in seen:
            seen[x] = evaluate(x)
        return seen[x]

    x = min(max(start, lo), hi)
    while True:
        if ahead is not None:
            ahead([n for n in (x, x - 1, x + 1) if lo <= n <= hi and n not in seen])
        step = next((n for n in (x - 1, x + 1) if lo <= n <= hi and better(at(n), at(x))), None)
        if step is None:
            return x, seen
        x = step
