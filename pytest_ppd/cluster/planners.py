"""Planners: the P:D split for the next interval, from what the frontend observed and a profile of the engine.

    model = ProfileModel.of(Hardware())                     # ppd profile of the simulated engine (virtual time)
    dyn = DynamoSla(model, Slo(500, 50), interval_s=5.0)
    dyn.warm(sample)                                        # its predictors, from a trace (Dynamo's warmup trace)
    dyn.decide(observed, prefill=2, decode=6, gpus=8)      # prefill engines for the next interval, or None

``DynamoSla`` is Dynamo's SLA planner (throughput-based scaling, ai-dynamo 0.6-1.x ``planner_core`` with its
prefill and decode planners), formula for formula, on our profile (profile/plan.py computes both counts):

    p_correction = observed TTFT / TTFT(ISL)        d_correction = observed ITL / ITL(concurrency, ISL + OSL/2)
    num_p = ceil(pred_num_req x pred_ISL / interval x min(1, p_correction) / prefill_thpt_per_gpu(ISL) / gpus_per_eng)
    num_d = ceil(pred_num_req x pred_OSL / interval / best_decode_thpt_per_gpu(ITL SLO / d_correction, ISL + OSL/2))

with concurrency = num_req / num_d x request_duration / interval (Little's law), predictors ``constant`` (the
last interval, Dynamo's) or ``moving-average`` (ours: the mean of the last 3, standing in for ARIMA/Kalman),
leading idle intervals skipped, no adjustment on an interval without answers, and Dynamo's global GPU
budget (both scaled by budget / total, prefill floored, decode gets the rest). Simplified: interpolation is
piecewise linear (Dynamo: cubic, and a 100 x 100 grid for decode); in a fixed pool of N GPUs the planner's
num_p is the split and the GPUs it would release stay decode engines (more decode engines only lower ITL).

``LoadBalance`` (online adaptive, ours) re-splits toward equal per-GPU load: from the last interval's
arrivals, prefill needs ``rate x ISL / prefill_thpt_per_gpu(ISL)`` GPUs and decode ``rate x OSL /
best_decode_thpt_per_gpu(ITL SLO, ISL + OSL/2)``; the split is N in that ratio, applied only when the
current split loads one role's GPUs more than 1.5 times the other's (seed 003's hysteresis factor).
"""

from __future__ import annotations

import math
import tempfile
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from pytest_ppd.cluster.deployments import Hardware
from pytest_ppd.cluster.elastic import Observed
from pytest_ppd.cluster.metrics import Slo
from pytest_ppd.cluster.workload import Trace
from pytest_ppd.errors import ConfigError
from pytest_ppd.profile.formats import DecodeTable, read_decode, read_prefill
from pytest_ppd.profile.plan import Target, best_decode_thpt, plan

PROFILE_CONTEXT = 16384  # the profiled engine's context: Dynamo's ISL grid then has a point every ~1000 tokens
HYSTERESIS = 1.5


@dataclass(frozen=True)
class ProfileModel:
    """A Dynamo-format profile directory and the interpolations planners read from it (TP 1)."""

    directory: Path
    isl: tuple[float, ...]
    ttft_ms: tuple[float, ...]
    decode: DecodeTable

    @classmethod
    def load(cls, directory: Path) -> "ProfileModel":
        pre = read_prefill(Path(directory))
        return cls(Path(directory), tuple(map(float, pre.isl)), tuple(pre.ttft_ms), read_decode(Path(directory)))

    @classmethod
    def of(cls, hw: Hardware, directory: Path | None = None) -> "ProfileModel":
        """The profile in ``directory`` if it holds one (ppd profile's, or Dynamo's profiler's), else the
        engine every GPU runs measured there in virtual time (ppd profile's prefill and decode sweeps at a
        16k context, one rep; no directory: a temporary one), once per process."""
        if directory is not None:
            try:
                return cls.load(Path(directory))
            except ConfigError:  # no profile there yet: measure one
                pass
        return _profile(hw, str(directory) if directory else None)

    def expected_ttft_ms(self, isl: float) -> float:
        """TTFT of a cold prefill of isl tokens (linear in ISL, clamped to the grid, as profile/plan.py)."""
        return float(np.interp(isl, self.isl, self.ttft_ms))

    def prefill_thpt_per_gpu(self, isl: float) -> float:
        """Prefill tokens/s of one GPU at this ISL: ISL / TTFT(ISL)."""
        return isl / self.expected_ttft_ms(isl) * 1000

    def decode_thpt_per_gpu(self, itl_ms: float, context: float) -> float:
        """Dynamo's find_best_throughput_per_gpu (profile/plan.py's), rounded to cache repeated asks."""
        return _best_decode(self.directory, round(itl_ms, 3), round(context))

    def expected_itl_ms(self, concurrency: float, context: float) -> float:
        """ITL at this concurrency per engine and mean context: linear in concurrency at each profiled context,
        then linear between contexts (clamped to the profile)."""
        d = self.decode
        y, itl = np.array(d.y_context_length), np.array(d.z_itl)
        n = np.array(d.x_kv_usage) * d.max_kv_tokens / y
        ctxs = np.unique(y)
        rows = [float(np.interp(concurrency, n[y == c][np.argsort(n[y == c])], itl[y == c][np.argsort(n[y == c])]))
                for c in ctxs]
        return float(np.interp(context, ctxs, rows))


@lru_cache(maxsize=64)
def _best_decode(directory: Path, itl_ms: float, context: int) -> float:
    return best_decode_thpt(directory, itl_ms, context)


@lru_cache(maxsize=8)
def _profile(hw: Hardware, directory: str | None) -> ProfileModel:
    from pytest_ppd.profile import ProfileDesign, run_profile

    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="ppd-cluster-profile-"))
    design = ProfileDesign(prefill_reps=1, sweeps=("prefill", "decode"))
    run_profile(hw.model, hw.gpu, 1, out, design=design, backend="virtual", context_length=PROFILE_CONTEXT,
                plots=False, sim_flags=hw.engine_args, command=["ppd", "cluster"])
    return ProfileModel.load(out)


# -- predictors -----------------------------------------------------------------------------
class Predictor(Protocol):
    def add(self, value: float) -> None: ...
    def next(self) -> float: ...


class Constant:
    """Dynamo's ConstantPredictor: the next interval is the last one (leading zeros skipped)."""

    def __init__(self, window: int = 1) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.started = False

    def add(self, value: float) -> None:
        value = 0.0 if math.isnan(value) else value
        self.started = self.started or value != 0
        if self.started:
            self.values.append(value)

    def next(self) -> float:
        return float(np.mean(self.values)) if self.values else 0.0


PREDICTORS: dict[str, Callable[[], Predictor]] = {"constant": Constant, "moving-average": lambda: Constant(3)}


def global_budget(num_p: int, num_d: int, budget: int, min_endpoint: int = 1) -> tuple[int, int]:
    """Dynamo's _apply_global_gpu_budget (one GPU per engine): within budget as is; else both scaled by
    budget / total, prefill floored and clamped to leave min_endpoint decode, decode gets the rest."""
    total = num_p + num_d
    if total <= budget:
        return num_p, num_d
    if budget < 2 * min_endpoint:
        return 0, 0
    num_p = max(min_endpoint, min(budget - min_endpoint, math.floor(num_p * budget / total)))
    return num_p, max(min_endpoint, budget - num_p)


class Planner(Protocol):
    """Decides, every interval, how many of the GPUs serve prefill next (None: keep the split)."""

    def warm(self, sample: Trace, gpus: int) -> int: ...
    def decide(self, obs: Observed, prefill: int, decode: int, gpus: int) -> int | None: ...


def interval_loads(trace: Trace, interval_s: float) -> list[tuple[int, float, float]]:
    """(requests, mean ISL, mean OSL) per interval of a trace; later turns count in their session's first."""
    first: dict[str, int] = {}
    buckets: dict[int, list[tuple[int, int]]] = {}
    for r in trace.requests:
        at = r.timestamp_ms if r.timestamp_ms is not None else first.get(r.session_id or "", 0)
        if r.session_id is not None:
            first.setdefault(r.session_id, at)
        buckets.setdefault(int(at / 1e3 // interval_s), []).append((r.input_length, r.output_length))
    nan = float("nan")
    return [(len(b), float(np.mean([x for x, _ in b])) if b else nan, float(np.mean([y for _, y in b])) if b else nan)
            for b in (buckets.get(k, []) for k in range(max(buckets) + 1))]


def mean_load(trace: Trace, interval_s: float) -> tuple[float, float, float]:
    """(requests/s, mean ISL, mean OSL): requests over the span of the arrivals (sessions' first turns), the
    span stretched by n / (n - 1) for the gap after the last; one arrival: over interval_s."""
    stamps = [r.timestamp_ms for r in trace.requests if r.timestamp_ms is not None]
    k = len(stamps)
    span_s = (max(stamps) - min(stamps)) / 1e3 * k / (k - 1) if k > 1 else interval_s
    isl = float(np.mean([r.input_length for r in trace.requests]))
    return len(trace.requests) / max(span_s, 1e-3), isl, float(np.mean([r.output_length for r in trace.requests]))


class DynamoSla:
    """Dynamo's SLA planner on a fixed pool (see the module docstring)."""

    name = "dynamo"

    def __init__(self, model: ProfileModel, slo: Slo, interval_s: float, predictor: str = "constant") -> None:
        if predictor not in PREDICTORS:
            raise ConfigError(f"'{predictor}' is not a load predictor; valid: {', '.join(PREDICTORS)}")
        self.model, self.slo, self.interval_s = model, slo, interval_s
        self.num_req, self.isl, self.osl = (PREDICTORS[predictor]() for _ in range(3))
        self.p_correction = self.d_correction = 1.0
        self.last = (0, 0)  # (num_p, num_d) before the budget, as Dynamo logs them

    def warm(self, sample: Trace, gpus: int) -> int:
        """Dynamo's load_predictor_warmup_trace: per-interval loads of a trace into the predictors; the first
        split is the planner's answer for them."""
        for n, isl, osl in interval_loads(sample, self.interval_s):
            self._observe(n, isl, osl)
        return self._plan(gpus) or gpus // 2

    def decide(self, obs: Observed, prefill: int, decode: int, gpus: int) -> int | None:
        self._observe(obs.requests, obs.isl, obs.osl)
        if any(math.isnan(v) for v in (obs.ttft_ms, obs.itl_ms, obs.isl, obs.osl)):
            return None  # Dynamo: "Metrics contain None or NaN values (no active requests), skipping adjustment"
        self.p_correction = obs.ttft_ms / self.model.expected_ttft_ms(obs.isl)
        concurrency = obs.requests / max(decode, 1) * obs.duration_s / obs.interval_s
        self.d_correction = obs.itl_ms / self.model.expected_itl_ms(concurrency, obs.isl + obs.osl / 2)
        return self._plan(gpus)

    def _observe(self, num_req: float, isl: float, osl: float) -> None:
        self.num_req.add(num_req)
        self.isl.add(isl)
        self.osl.add(osl)

    def _plan(self, gpus: int) -> int | None:
        rate, isl, osl = self.num_req.next() / self.interval_s, self.isl.next(), self.osl.next()
        if not (rate > 0 and isl >= 1 and osl >= 1):
            return None
        itl = self.slo.itl_ms / self.d_correction if self.d_correction > 0 else self.slo.itl_ms
        target = Target(self.slo.ttft_ms, itl, rate * min(1.0, self.p_correction), round(isl), round(osl))
        num_p = plan(self.model.directory, target).prefill_dynamo
        num_d = plan(self.model.directory, Target(self.slo.ttft_ms, itl, rate, round(isl), round(osl))).decode
        self.last = (num_p, num_d)
        return global_budget(num_p, num_d, gpus)[0]


class LoadBalance:
    """Online adaptive: equal per-GPU load between the roles, from the last interval (module docstring)."""

    name = "adaptive"

    def __init__(self, model: ProfileModel, slo: Slo, interval_s: float, hysteresis: float = HYSTERESIS) -> None:
        self.model, self.slo, self.interval_s, self.hysteresis = model, slo, interval_s, hysteresis
        self.osl = float("nan")

    def needs(self, rate: float, isl: float, osl: float) -> tuple[float, float]:
        """(GPUs prefill needs, GPUs decode needs) at this load."""
        d_thpt = self.model.decode_thpt_per_gpu(self.slo.itl_ms, isl + osl / 2)
        return rate * isl / self.model.prefill_thpt_per_gpu(isl), rate * osl / d_thpt if d_thpt > 0 else math.inf

    def split(self, rate: float, isl: float, osl: float, gpus: int) -> int:
        p, d = self.needs(rate, isl, osl)
        share = p / (p + d) if math.isfinite(d) and p + d > 0 else 0.0  # decode cannot meet the ITL SLO: all to it
        return min(max(round(gpus * share), 1), gpus - 1)

    def warm(self, sample: Trace, gpus: int) -> int:
        """The first split: the sample's mean load, balanced."""
        return self.split(*mean_load(sample, self.interval_s), gpus)

    def decide(self, obs: Observed, prefill: int, decode: int, gpus: int) -> int | None:
        self.osl = obs.osl if not math.isnan(obs.osl) else self.osl
        if obs.requests == 0 or math.isnan(self.osl):
            return None
        p, d = self.needs(obs.requests / obs.interval_s, obs.isl, self.osl)
        load_p, load_d = p / max(prefill, 1), d / max(gpus - prefill, 1)
        if 1 / self.hysteresis <= (load_p / load_d if load_d > 0 else math.inf) <= self.hysteresis:
            return None
        return self.split(obs.requests / obs.interval_s, obs.isl, self.osl, gpus)
