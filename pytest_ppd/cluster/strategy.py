"""P:D allocation strategies: how a cluster's GPUs are split between prefill and decode over a run.

    study = Study(gpus=8, slo=Slo(ttft_ms=500, itl_ms=50))
    outcome = StaticBest(sample=generate(spec, seed=1001)).run(generate(spec, seed=1), study)
    outcome.chosen, outcome.summary.goodput_per_gpu
    report = across_seeds("static", spec, study, seeds=range(5))     # means with 95% CIs

A strategy only replays the evaluation trace; whatever it decides in advance it learns from its own
sample of the workload (another seed), never from the trace it is judged on.

- ``fixed``: one given deployment, as is.
- ``static`` (seed 003's "static combined"): try every static deployment of N GPUs (aggregated and each
  xPyD split) on the sample, keep the best, run it. Best = highest SLO attainment (on one trace the same
  order as goodput), ties broken by headroom: the lower of max(TTFT P90 / its SLO, ITL P90 / its SLO).

Next (same protocol): online adaptive (a planner every dt re-splitting P:D; a re-split costs drain time and
engine start-up), offline batched (hindsight-optimal per window: an upper bound), Dynamo's SLA planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware, candidates
from pytest_ppd.cluster.metrics import Slo, Summary, mean_ci, summarize
from pytest_ppd.cluster.runner import simulate
from pytest_ppd.cluster.workload import Trace, WorkloadSpec, generate
from pytest_ppd.errors import ConfigError

SAMPLE_SEED_OFFSET = 1_000_003  # a strategy's sample of the workload: seed + this (never the judged trace)


@dataclass(frozen=True)
class Study:
    """The fixed setting strategies compete in: N GPUs of one hardware, one router policy, the SLOs."""

    gpus: int
    slo: Slo = field(default_factory=Slo)
    hardware: Hardware = field(default_factory=Hardware)
    policy: str = "rr"


@dataclass(frozen=True)
class Outcome:
    """What a strategy ran and how it did; ``considered``: what it tried on its sample, if anything."""

    strategy: str
    chosen: str
    summary: Summary
    considered: tuple[Summary, ...] = ()


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


class Fixed:
    """One deployment for the whole run."""

    name = "fixed"

    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec

    def run(self, trace: Trace, study: Study) -> Outcome:
        if self.spec.gpus != study.gpus:
            raise ConfigError(f"{self.spec.label} is {self.spec.gpus} GPUs; the study has {study.gpus}")
        summary = summarize(simulate(self.spec, trace, study.hardware), study.slo)
        return Outcome(self.name, self.spec.label, summary)


class StaticBest:
    """The best static deployment for a sample of the workload (see the module docstring)."""

    name = "static"

    def __init__(self, sample: Trace, *, aggregated: bool = True) -> None:
        self.sample, self.aggregated = sample, aggregated

    def choose(self, study: Study) -> tuple[DeploymentSpec, tuple[Summary, ...]]:
        specs = candidates(study.gpus, policy=study.policy, aggregated=self.aggregated)
        tried = tuple(summarize(simulate(s, self.sample, study.hardware), study.slo) for s in specs)
        best = max(range(len(specs)), key=lambda i: (rank_key(tried[i]), -i))
        return specs[best], tried

    def run(self, trace: Trace, study: Study) -> Outcome:
        spec, tried = self.choose(study)
        summary = summarize(simulate(spec, trace, study.hardware), study.slo)
        return Outcome(self.name, spec.label, summary, tried)


STRATEGIES = ("fixed", "static")


def make_strategy(name: str, workload: WorkloadSpec, seed: int, *, deployment: DeploymentSpec | None = None,
                  aggregated: bool = True) -> Strategy:
    """A strategy by name, its sample drawn from the workload with seed + SAMPLE_SEED_OFFSET."""
    if name == "fixed":
        if deployment is None:
            raise ConfigError("strategy fixed needs a deployment (--deployment agg|xPyD)")
        return Fixed(deployment)
    if name == "static":
        return StaticBest(generate(workload, seed=seed + SAMPLE_SEED_OFFSET), aggregated=aggregated)
    raise ConfigError(f"'{name}' is not a strategy; valid: {', '.join(STRATEGIES)} "
                      "(online, offline and the SLA planner are not built yet)")


@dataclass(frozen=True)
class SeedReport:
    """One strategy over several seeds: every outcome and (mean, low, high) 95% CIs of the key metrics."""

    strategy: str
    seeds: tuple[int, ...]
    outcomes: tuple[Outcome, ...]
    goodput_per_gpu: tuple[float, float, float]
    slo_attainment: tuple[float, float, float]
    ttft_p99_ms: tuple[float, float, float]
    itl_p99_ms: tuple[float, float, float]


def across_seeds(name: str, workload: WorkloadSpec, study: Study, seeds: Sequence[int], *,
                 deployment: DeploymentSpec | None = None, aggregated: bool = True) -> SeedReport:
    """Run the strategy on the workload drawn with each seed; CIs over seeds."""
    outcomes = tuple(make_strategy(name, workload, s, deployment=deployment, aggregated=aggregated)
                     .run(generate(workload, seed=s), study) for s in seeds)
    sums = [o.summary for o in outcomes]
    return SeedReport(name, tuple(seeds), outcomes, mean_ci([s.goodput_per_gpu for s in sums]),
                      mean_ci([s.slo_attainment for s in sums]), mean_ci([s.ttft_ms.p99 for s in sums]),
                      mean_ci([s.itl_ms.p99 for s in sums]))
