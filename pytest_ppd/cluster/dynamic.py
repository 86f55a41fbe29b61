"""Strategies over time: planners that re-split P:D during the run, and the hindsight bound they are held to.

    study = Study(8, Slo(500, 50), interval_s=5.0, resplit=Resplit(drain_s=1.0, startup_s=30.0))
    Online("adaptive", lambda st: LoadBalance(model, st.slo, st.interval_s), sample).run(trace, study)
    Online("dynamo", lambda st: DynamoSla(model, st.slo, st.interval_s), sample).run(trace, study)
    Offline(model).run(trace, study)                                          # "offline": an upper bound

- Online (``adaptive``, ``dynamo``): starts from the split its planner sizes from the strategy's own sample of
  the workload (another seed), then every ``interval_s`` hands the planner what the frontend observed in
  the interval and re-splits as told, unless engines are still on the move (as Dynamo skips an adjustment
  while a rollout is in progress); each moved engine drains and restarts (``study.resplit``; elastic.py).
- Offline batched (``offline``), labelled an upper bound: it knows the judged trace. Per window of
  ``interval_s`` (requests by send time; a session's later turns in its first turn's window) it takes the
  split that serves that window's requests best, by hill-climbing over x on the window alone from the
  window's demand split; the splits run as one schedule whose re-splits cost only their drain (free
  restarts). It also hill-climbs the best static split in hindsight on the whole trace and keeps the run
  with the higher goodput. Not the true optimum: windows are searched one at a time from a cold
  deployment, and hill-climbing stops at a local best.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, TypeVar

from pytest_ppd.cluster.deployments import DeploymentSpec, engine_config
from pytest_ppd.cluster.elastic import ElasticDeployment, Resplit, Schedule, Split
from pytest_ppd.cluster.metrics import Summary, summarize
from pytest_ppd.cluster.planners import LoadBalance, Planner, ProfileModel, mean_load
from pytest_ppd.cluster.pool import Lookahead, run_of, summary_of
from pytest_ppd.cluster.runner import Run, replay_run
from pytest_ppd.cluster.study import Outcome, Study, headroom, hill_climb, ttfts
from pytest_ppd.cluster.workload import Trace
from pytest_ppd.sim.nodes import to_ns

FREE = Resplit(drain_s=0.0, startup_s=0.0)
T = TypeVar("T")


def goodput_key(s: Summary) -> tuple[float, float]:
    """Higher is better: goodput per GPU, then headroom."""
    return s.goodput_per_gpu, -headroom(s)


def run_schedule(trace: Trace, study: Study, start: int, cost: Resplit, label: str,
                 each: Callable[[ElasticDeployment], None] | None = None,
                 at: tuple[tuple[int, int], ...] = ()) -> tuple[Run, ElasticDeployment]:
    """Replay trace on an elastic xPyD deployment from ``start`` prefill engines; ``each(dep)`` every interval
    while anything is left to do, and ``resplit(x)`` at each (time ns, x) of ``at``."""
    started = time.perf_counter()
    hw = study.hardware
    dep = ElasticDeployment(engine_config(hw, "prefill"), engine_config(hw, "decode"), gpus=study.gpus,
                            prefill=start, policy=study.policy, cost=cost)
    every = to_ns(study.interval_s)

    def tick() -> None:
        assert each is not None
        each(dep)
        if dep.pending():
            dep.call_at(dep.now_ns + every, tick)

    if each is not None:
        dep.call_at(every, tick)
    for when, x in at:
        dep.call_at(when, functools.partial(_resplit, dep, x))
    return replay_run(dep, trace, label, study.gpus, started=started), dep


def _resplit(dep: ElasticDeployment, x: int) -> None:
    dep.resplit(x)


def _schedule(dep: ElasticDeployment, decisions: tuple[tuple[float, int], ...] = ()) -> Schedule:
    return Schedule(tuple(dep.timeline), dep.moves, dep.down_ns / 1e9, decisions)


class Online:
    """A planner re-splitting every interval (module docstring); ``plan(study)`` makes the planner."""

    def __init__(self, name: str, plan: Callable[[Study], Planner], sample: Trace) -> None:
        self.name, self.plan, self.sample = name, plan, sample

    def run(self, trace: Trace, study: Study) -> Outcome:
        planner = self.plan(study)
        start = planner.warm(self.sample, study.gpus)
        decisions: list[tuple[float, int]] = []

        def each(dep: ElasticDeployment) -> None:
            x = planner.decide(dep.observe(), dep.target(), len(dep.decode), dep.gpus)
            if x is not None and dep.stable:  # a rollout in progress: Dynamo skips the adjustment
                decisions.append((dep.now_ns / 1e9, x))
                dep.resplit(x)

        run, dep = run_schedule(trace, study, start, study.resplit, self.name, each)
        schedule = _schedule(dep, tuple(decisions))
        summary = dataclasses.replace(summarize(run, study.slo), deployment=f"{self.name} {schedule.label()}")
        return Outcome(self.name, schedule.label(), summary, schedule=schedule, ttft_ms=ttfts(run))


def windows(trace: Trace, interval_s: float) -> list[Trace]:
    """The trace cut into windows of interval_s by send time (later turns with their session's first), each
    shifted to start at 0; empty windows are empty traces."""
    first: dict[str, int] = {}
    cut: dict[int, list] = {}
    for r in trace.requests:
        at = r.timestamp_ms if r.timestamp_ms is not None else first[r.session_id or ""]
        if r.session_id is not None:
            first.setdefault(r.session_id, at)
        k = int(at / 1e3 // interval_s)
        shift = round(k * interval_s * 1e3)
        cut.setdefault(k, []).append(r if r.timestamp_ms is None else
                                     dataclasses.replace(r, timestamp_ms=r.timestamp_ms - shift))
    return [Trace(f"{trace.name}[{k}]", tuple(cut.get(k, ())), trace.block_tokens) for k in range(max(cut) + 1)]


class Offline:
    """Offline batched, hindsight per window: an upper bound (module docstring)."""

    name = "offline"

    def __init__(self, model: ProfileModel) -> None:
        self.model = model

    def run(self, trace: Trace, study: Study) -> Outcome:
        n, runs = study.gpus, [0]
        balance = LoadBalance(self.model, study.slo, study.interval_s)

        def trials(part: Trace, task: Callable[..., T]) -> Lookahead[T]:
            return Lookahead(lambda x: (task, (DeploymentSpec("pd", n, x, policy=study.policy), part,
                                               study.hardware, study.slo)))

        def first(look: Lookahead[T], start: int) -> Lookahead[T]:  # what a climb from start evaluates first
            look.want([x for x in (start, start - 1, start + 1) if 1 <= x <= n - 1])
            return look

        def on(look: Lookahead[T], keep: dict[int, T], summary: Callable[[T], Summary]) -> Callable[[int], Summary]:
            def evaluate(x: int) -> Summary:
                if x not in keep:
                    runs[0] += 1
                    keep[x] = look(x)
                return summary(keep[x])
            return evaluate

        # every window's climb asks its first trials at once; the climbs, one after another, wait for them
        parts = [(k, part, balance.split(*mean_load(part, study.interval_s), n))
                 for k, part in enumerate(windows(trace, study.interval_s)) if part.requests]
        looks = [first(trials(part, summary_of), start) for _, part, start in parts]
        plan: list[tuple[int, int]] = []  # (window start ns, its best split)
        try:
            for look, (k, _, start) in zip(looks, parts):
                plan.append((to_ns(k * study.interval_s),
                             hill_climb(on(look, {}, _same), start, 1, n - 1, look.want)[0]))
                look.close()
        finally:
            for look in looks:
                look.close()
        whole: dict[int, tuple[Run, Summary]] = {}  # static splits tried on the whole trace
        every = trials(trace, run_of)
        try:
            # in workers while the schedule runs here: the climb's first trials, from the split the schedule
            # holds throughout if every window chose it (then that run is the split's), else the demand split
            same = all(x == plan[0][1] for _, x in plan)
            start = plan[0][1] if same else balance.split(*mean_load(trace, study.interval_s), n)
            every.want([x for x in (start, start - 1, start + 1) if 1 <= x <= n - 1 and not (same and x == start)])
            run, dep = run_schedule(trace, study, plan[0][1], FREE, self.name, at=tuple(plan[1:]))
            best, schedule = summarize(run, study.slo), _schedule(dep, tuple((t / 1e9, x) for t, x in plan))
            if dep.moves == 0:  # one split throughout: that run is the static split's (elastic left alone = static)
                whole[plan[0][1]] = (run, best)
                start = plan[0][1]
            else:
                start = balance.split(*mean_load(trace, study.interval_s), n)
            _, tried = hill_climb(on(every, whole, _second), start, 1, n - 1,
                                  lambda xs: every.want([x for x in xs if x not in whole]))
        finally:
            every.close()
        x = max(tried, key=lambda k: goodput_key(tried[k]))  # of every split it ran on the trace, in hindsight
        if goodput_key(tried[x]) > goodput_key(best):
            (run, best), schedule = whole[x], Schedule((Split(0, x, n - x, 0),), 0, 0.0, ((0.0, x),))
        label = f"{schedule.label()} (upper bound)"
        summary = dataclasses.replace(best, deployment=f"{self.name} {label}")
        return Outcome(self.name, label, summary, tuple(tried.values()), schedule, runs[0] + 1, ttfts(run))


def _same(s: Summary) -> Summary:
    return s


def _second(kept: tuple[Run, Summary]) -> Summary:
    return kept[1]
