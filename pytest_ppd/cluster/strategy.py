"""P:D allocation strategies: how a cluster's GPUs are split between prefill and decode over a run.

    study = Study(gpus=8, slo=Slo(ttft_ms=500, itl_ms=50))
    outcome = StaticBest(sample=generate(spec, seed=1001)).run(generate(spec, seed=1), study)
    outcome.chosen, outcome.summary.goodput_per_gpu
    report = across_seeds("static", spec, study, seeds=range(5))     # means with 95% CIs

A strategy only replays the evaluation trace; whatever it decides in advance it learns from its own
sample of the workload (another seed), never from the trace it is judged on (``offline`` excepted: it is
the hindsight bound).

- ``fixed``: one given deployment, as is.
- ``static`` (seed 003's "static combined"): try the static deployments of N GPUs (aggregated and the xPyD
  splits) on the sample, keep the best, run it. Best = highest SLO attainment (on one trace the same
  order as goodput), ties broken by headroom: the lower of max(TTFT P90 / its SLO, ITL P90 / its SLO).
  ``search="all"`` tries every split; ``"local"`` hill-climbs from the sample's demand split (planners.py).
- ``adaptive`` (online), ``dynamo`` (Dynamo's SLA planner) and ``offline`` (batched, hindsight per window:
  an upper bound): strategies over time, dynamic.py; they read a profile of the engine (planners.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware, candidates
from pytest_ppd.cluster.dynamic import Offline, Online
from pytest_ppd.cluster.metrics import Summary, mean_ci, summarize
from pytest_ppd.cluster.planners import PREDICTORS, DynamoSla, LoadBalance, ProfileModel
from pytest_ppd.cluster.pool import Lookahead, summary_of
from pytest_ppd.cluster.runner import simulate
from pytest_ppd.cluster.study import Outcome, Strategy, Study, headroom, hill_climb, rank_key, ttfts
from pytest_ppd.cluster.workload import Trace, WorkloadSpec, generate
from pytest_ppd.errors import ConfigError

__all__ = ["SAMPLE_SEED_OFFSET", "STRATEGIES", "Fixed", "Outcome", "SeedReport", "StaticBest", "Strategy", "Study",
           "across_seeds", "headroom", "make_strategy", "rank_key"]

SAMPLE_SEED_OFFSET = 1_000_003  # a strategy's sample of the workload: seed + this (never the judged trace)


class Fixed:
    """One deployment for the whole run."""

    name = "fixed"

    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec

    def run(self, trace: Trace, study: Study) -> Outcome:
        if self.spec.gpus != study.gpus:
            raise ConfigError(f"{self.spec.label} is {self.spec.gpus} GPUs; the study has {study.gpus}")
        run = simulate(self.spec, trace, study.hardware)
        return Outcome(self.name, self.spec.label, summarize(run, study.slo), ttft_ms=ttfts(run))


class StaticBest:
    """The best static deployment for a sample of the workload (see the module docstring); ``start``: the
    split a local search starts from (None: try every split)."""

    name = "static"

    def __init__(self, sample: Trace, *, aggregated: bool = True, start: int | None = None) -> None:
        self.sample, self.aggregated, self.start = sample, aggregated, start

    def choose(self, study: Study) -> tuple[DeploymentSpec, tuple[Summary, ...]]:
        def trial(spec: DeploymentSpec) -> tuple[Callable[..., Summary], tuple[Any, ...]]:
            return summary_of, (spec, self.sample, study.hardware, study.slo)

        if self.start is None:
            specs = candidates(study.gpus, policy=study.policy, aggregated=self.aggregated)
            every = Lookahead(lambda i: trial(specs[i]))
            try:
                every.want(range(len(specs)))
                sums = tuple(every(i) for i in range(len(specs)))
            finally:
                every.close()
        else:
            specs = [DeploymentSpec("agg", study.gpus, policy=study.policy)] if self.aggregated else []
            agg, split = Lookahead(lambda _: trial(specs[0])), Lookahead(
                lambda x: trial(DeploymentSpec("pd", study.gpus, x, policy=study.policy)))
            try:
                agg.want([0] if specs else [])
                _, seen = hill_climb(split, self.start, 1, study.gpus - 1, split.want)
                sums = tuple(agg(0) for _ in specs) + tuple(seen[x] for x in sorted(seen))
            finally:
                agg.close()
                split.close()
            specs += [DeploymentSpec("pd", study.gpus, x, policy=study.policy) for x in sorted(seen)]
        best = max(range(len(specs)), key=lambda i: (rank_key(sums[i]), -i))
        return specs[best], sums

    def run(self, trace: Trace, study: Study) -> Outcome:
        spec, tried = self.choose(study)
        run = simulate(spec, trace, study.hardware)
        return Outcome(self.name, spec.label, summarize(run, study.slo), tried, runs=len(tried) + 1, ttft_ms=ttfts(run))


STRATEGIES = ("fixed", "static", "adaptive", "dynamo", "offline")
SEARCHES = ("all", "local")


def make_strategy(name: str, workload: WorkloadSpec, seed: int, *, deployment: DeploymentSpec | None = None,
                  aggregated: bool = True, search: str = "all", hardware: Hardware | None = None,
                  profile: Path | None = None, predictor: str = "constant", sample: Trace | None = None) -> Strategy:
    """A strategy by name, its sample drawn from the workload with seed + SAMPLE_SEED_OFFSET (or ``sample``);
    planners read the profile of ``hardware``'s engine (measured into ``profile``, or a temporary dir)."""
    if name not in STRATEGIES:
        raise ConfigError(f"'{name}' is not a strategy; valid: {', '.join(STRATEGIES)}")
    if search not in SEARCHES:
        raise ConfigError(f"'{search}' is not a static search; valid: {', '.join(SEARCHES)}")
    if predictor not in PREDICTORS:
        raise ConfigError(f"'{predictor}' is not a load predictor; valid: {', '.join(PREDICTORS)}")
    if name == "fixed":
        if deployment is None:
            raise ConfigError("strategy fixed needs a deployment (--deployment agg|xPyD)")
        return Fixed(deployment)
    sample = sample or generate(workload, seed=seed + SAMPLE_SEED_OFFSET)
    if name == "static" and search == "all":
        return StaticBest(sample, aggregated=aggregated)
    model = ProfileModel.of(hardware or Hardware(), profile)
    if name == "static":
        return _LocalStatic(sample, model, aggregated)
    if name == "adaptive":
        return Online(name, lambda st: LoadBalance(model, st.slo, st.interval_s), sample)
    if name == "dynamo":
        return Online(name, lambda st: DynamoSla(model, st.slo, st.interval_s, predictor), sample)
    return Offline(model)


class _LocalStatic:
    """static with search="local": StaticBest hill-climbing from the sample's demand split (needs the study)."""

    name = "static"

    def __init__(self, sample: Trace, model: ProfileModel, aggregated: bool) -> None:
        self.sample, self.model, self.aggregated = sample, model, aggregated

    def run(self, trace: Trace, study: Study) -> Outcome:
        start = LoadBalance(self.model, study.slo, study.interval_s).warm(self.sample, study.gpus)
        return StaticBest(self.sample, aggregated=self.aggregated, start=start).run(trace, study)


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
                 deployment: DeploymentSpec | None = None, aggregated: bool = True, search: str = "all",
                 profile: Path | None = None) -> SeedReport:
    """Run the strategy on the workload drawn with each seed; CIs over seeds."""
    outcomes = tuple(make_strategy(name, workload, s, deployment=deployment, aggregated=aggregated, search=search,
                                   hardware=study.hardware, profile=profile).run(generate(workload, seed=s), study)
                     for s in seeds)
    return seed_report(name, tuple(seeds), outcomes)


def seed_report(name: str, seeds: tuple[int, ...], outcomes: tuple[Outcome, ...]) -> SeedReport:
    """The outcomes of one strategy over seeds, with 95% CIs."""
    sums = [o.summary for o in outcomes]
    return SeedReport(name, seeds, outcomes, mean_ci([s.goodput_per_gpu for s in sums]),
                      mean_ci([s.slo_attainment for s in sums]), mean_ci([s.ttft_ms.p99 for s in sums]),
                      mean_ci([s.itl_ms.p99 for s in sums]))
