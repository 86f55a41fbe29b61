"""Fit the sim's cost profile to measured LOCAL rounds, so the sim reproduces that hardware.

    profile, fit = calibrate(rounds)       # rounds: records.jsonl dicts (RecordStore.read(...).rounds)
    profile.save("h100.json")              # then: --ppd-sim-args="--sim-profile=h100.json"

A LOCAL append round is BS requests, each with L cached and m new tokens, sent
together to one engine: its batch latency is the per-request overhead plus the
extend steps that prefill all of them. Which tokens go into which step depends
only on token counts, the chunk size and the pool, never on time, so each point's
steps are scheduled once by the engine itself and the fit only re-times them
(least squares on log latency, efficiencies capped at what hardware reaches, so a
calibrated sim still never beats the roofline floor).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence, cast

import numpy as np
from scipy import optimize

from pytest_ppd.errors import ConfigError
from pytest_ppd.sglang_defaults import server_defaults
from pytest_ppd.sim.clock import VirtualRunner
from pytest_ppd.sim.costmodel import EFFICIENCY_CAPS, CostModel, CostProfile, Extend, query_rows
from pytest_ppd.sim.engine import Engine, SimRequest
from pytest_ppd.sim.fit import Fit
from pytest_ppd.specs import GpuSpec, ModelSpec, gpu_spec, model_spec

# The fitted coefficients, with their bounds (seconds, or efficiency up to the hardware cap).
# Appends identify prefill's costs only; the decode-side ones (c0_decode_s, eta_kv, which reading long
# contexts one token at a time is bound by) keep their starting values rather than soak up misfit.
# eta_w_decode likewise: prefill streams the weights in GEMMs, decode in CUDA-graph GEMVs.
FITTED = ("c0_prefill_s", "launch_prefill_s", "request_overhead_s", "request_cpu_s", "token_cpu_s", "eta_gemm",
          "eta_w", "eta_attn")
BOUNDS = {"c0_prefill_s": (0.0, 0.5), "launch_prefill_s": (0.0, 0.05), "request_overhead_s": (0.0, 1.0),
          "request_cpu_s": (0.0, 0.1), "token_cpu_s": (0.0, 1e-4),
          **{k: (0.01, cap) for k, cap in EFFICIENCY_CAPS.items()}}


@dataclass(frozen=True)
class Setup:
    """The measured engine: what the steps' times depend on besides the profile."""

    model: ModelSpec
    gpu: GpuSpec
    tp: int = 1
    attention_backend: str | None = None

    def cost(self, profile: CostProfile | None = None) -> CostModel:
        return CostModel(self.model, self.gpu, profile, self.tp, self.attention_backend)


class _Recorder(CostModel):
    """A cost model that remembers every extend batch it is asked to time."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, tp_size: int) -> None:
        super().__init__(model, gpu, tp_size=tp_size)
        self.steps: list[list[Extend]] | None = None

    def extend_time(self, chunks: Iterable[Extend]) -> float:
        chunks = list(chunks)
        if self.steps is not None:
            self.steps.append(chunks)
        return super().extend_time(chunks)


def append_steps(model: ModelSpec, gpu: GpuSpec, bs: int, L: int, m: int, *, chunk: int, pool: int,
                 max_running: int = 4096, tp_size: int = 1) -> list[list[Extend]]:
    """The extend steps the engine runs for BS appends of m tokens onto BS cached contexts of L."""
    if bs * (L + m + 1) > pool:
        raise ConfigError(f"bs{bs}-L{L}-m{m}: {bs * (L + m + 1)} tokens do not fit a {pool}-token pool; "
                          "such rounds are invalid and cannot calibrate anything")
    recorder = _Recorder(model, gpu, tp_size)
    engine = Engine(recorder, pool, chunked_prefill_size=chunk, max_running_requests=max_running)
    runner = VirtualRunner(engine)
    vocab = model.vocab_size - 1
    contexts = [[(c * 1_000_003 + j * 7919) % vocab + 1 for j in range(L)] for c in range(bs)]
    for c, ids in enumerate(contexts):
        runner.submit(SimRequest(f"warm{c}", ids, 1, 0.0))
    start = runner.run() + 1.0
    recorder.steps = []
    for c, ids in enumerate(contexts):
        fresh = [(c * 104_729 + L + j * 31) % vocab + 1 for j in range(m)]
        runner.submit(SimRequest(f"append{c}", ids + fresh, 1, start))
    runner.run()
    return recorder.steps


@dataclass(frozen=True)
class Point:
    bs: int
    L: int
    m: int
    measured_ms: float
    n: int
    steps: tuple[tuple[Extend, ...], ...]


def predict_ms(model: ModelSpec, gpu: GpuSpec, profile: CostProfile, point: Point, tp_size: int = 1,
               attention_backend: str | None = None) -> float:
    return _predict_ms(Setup(model, gpu, tp_size, attention_backend), profile, point)


def _predict_ms(setup: Setup, profile: CostProfile, point: Point) -> float:
    cost = setup.cost(profile)
    return (profile.request_overhead_s + sum(cost.extend_time(step) for step in point.steps)) * 1e3


def _flag(argv: Sequence[str], name: str) -> int | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith(name + "="):
            return int(arg.split("=", 1)[1])
    return None


def _flag_text(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _engine_settings(rounds: list[dict[str, Any]], model: ModelSpec,
                     gpu: GpuSpec) -> tuple[int, int, Setup, list[str]]:
    """(chunk, pool, setup, assumptions) as the measured engine ran: its recorded argv, else SGLang's defaults."""
    argv = [a for cmd in rounds[0].get("server_argv") or [] for a in cmd]
    tp = _flag(argv, "--tp-size") or 1
    defaults = server_defaults(model, gpu, "null", tp)
    chunk = _flag(argv, "--chunked-prefill-size") or defaults.chunked_prefill_size
    pool = _flag(argv, "--max-total-tokens") or defaults.pool_tokens
    backend = _flag_text(argv, "--attention-backend") or defaults.attention_backend
    source = "the records' server_argv" if argv else "no server_argv in the records"
    rows = query_rows(model, 1, backend, gpu.arch)
    notes = [f"chunked_prefill_size={chunk}, KV pool={pool} tokens, TP={tp}, attention backend {backend} "
             f"(an append of 1 token computes {rows:g} query rows): flags from {source}, SGLang 0.5.23's "
             f"defaults for {gpu.name} otherwise"]
    return chunk, pool, Setup(model, gpu, tp, backend), notes


def engine_latency_ms(record: dict[str, Any]) -> float:
    """The slowest request's server-side TTFT (SGLang's first_token_latency, --enable-metrics): what the
    engine spent, without the client's and HTTP's share, which a sim run adds back on its own host.
    Records without it fall back to the client-side batch latency."""
    server = record.get("server_ttft_ms") or []
    if server and all(isinstance(x, (int, float)) and x > 0 for x in server):
        return float(max(server))
    return float(record["batch_latency_ms"])


def collect(rounds: Iterable[dict[str, Any]]) -> tuple[Setup, list[Point], list[str]]:
    """Valid LOCAL rounds grouped per point (median latency), each with its scheduled steps; and what
    that assumed (engine settings, rounds per point, which latency)."""
    local = [r for r in rounds if r.get("kind", "round") == "round" and r.get("valid") and r.get("path") == "local"]
    if not local:
        raise ConfigError("no valid LOCAL rounds to calibrate from; give the records.jsonl of a run that "
                          "measured the local path (pytest suites/ --ppd-backend=sglang ...)")
    setups = {(r["model"], r["gpu"], r.get("backend"), r.get("prefill_gpu")) for r in local}
    if len(setups) != 1:
        raise ConfigError(f"rounds from {len(setups)} model/GPU/backend setups {sorted(map(str, setups))}: "
                          "calibrate one at a time")
    model, gpu = model_spec(local[0]["model"]), gpu_spec(local[0]["gpu"])
    chunk, pool, setup, notes = _engine_settings(local, model, gpu)
    groups: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for r in local:
        groups[(int(r["bs"]), int(r["L"]), int(r["m"]))].append(engine_latency_ms(r))
    single = sum(len(xs) == 1 for xs in groups.values())
    if single:
        notes.append(f"{single} of {len(groups)} points have one round: their medians carry that round's noise")
    if not any(r.get("server_ttft_ms") and all(r["server_ttft_ms"]) for r in local):
        notes.append("no server-side first_token_latency (SGLang --enable-metrics): fitted to client-side "
                     "latency, which includes the client's and HTTP's share")
    pool = max([pool] + [bs * (L + m + 1) for bs, L, m in groups])  # valid rounds fit the measured pool
    points = [Point(bs, L, m, float(np.median(xs)), len(xs), tuple(tuple(s) for s in append_steps(
                  model, gpu, bs, L, m, chunk=chunk, pool=pool, tp_size=setup.tp)))
              for (bs, L, m), xs in sorted(groups.items())]
    return setup, points, notes


Bounds = dict[str, tuple[float, float]]


def bounds_with(caps: dict[str, float] | None) -> Bounds:
    """BOUNDS with the efficiencies capped further by what `ppd microbench` measured on the GPU."""
    out = dict(BOUNDS)
    for key, cap in (caps or {}).items():
        if key in out:
            lo, hi = out[key]
            out[key] = (min(lo, cap), min(hi, cap))
    return out


def _fit(setup: Setup, points: Sequence[Point], base: CostProfile, bounds: Bounds = BOUNDS) -> CostProfile:
    """A robust least-squares fit of the relative error (soft-L1 on log latency: a few outlying points
    cannot drag the rest), every coefficient within its bounds."""
    measured = np.log([p.measured_ms for p in points])

    def profile_of(x: np.ndarray) -> CostProfile:
        values = {k: float(min(max(v, bounds[k][0]), bounds[k][1])) for k, v in zip(FITTED, x)}
        return replace(base, **cast(dict[str, Any], values))  # FITTED names only float fields

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = profile_of(x)
        return np.log([_predict_ms(setup, prof, p) for p in points]) - measured

    lo, hi = np.array([bounds[k][0] for k in FITTED]), np.array([bounds[k][1] for k in FITTED])
    best = None
    # The launch time shows only where it exceeds a step's GPU time (a max, flat below): start the fit from
    # several launch times, so a launch-bound host is found wherever it lies, and keep the best.
    for launch in sorted({base.launch_prefill_s, 0.0, 0.005, 0.01, 0.02}):
        x0 = np.array([launch if k == "launch_prefill_s" else getattr(base, k) for k in FITTED])
        result = optimize.least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi), x_scale="jac",
                                        loss="soft_l1", f_scale=0.05)
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    return profile_of(best.x)


def _errors(setup: Setup, profile: CostProfile, points: Sequence[Point]) -> list[float]:
    return [_predict_ms(setup, profile, p) / p.measured_ms - 1 for p in points]


def cross_validated(setup: Setup, points: Sequence[Point], base: CostProfile,
                    bounds: Bounds = BOUNDS) -> dict[str, dict[str, float]]:
    """Errors on points the fit never saw: for each axis (BS, L, m) with 2+ levels, fit without one level
    and predict it, for every level; MAPE, P90 and max |error| per axis."""
    out = {}
    for axis in ("bs", "L", "m"):
        levels = sorted({getattr(p, axis) for p in points})
        if len(levels) < 2:
            continue
        errors: list[float] = []
        for level in levels:
            train = [p for p in points if getattr(p, axis) != level]
            if len(train) < 3:
                continue
            held = [p for p in points if getattr(p, axis) == level]
            errors += _errors(setup, _fit(setup, train, base, bounds), held)
        if errors:
            a = np.abs(errors)
            out[axis] = {"mape": float(a.mean()), "p90": float(np.percentile(a, 90)), "max": float(a.max()),
                         "n": len(a)}
    return out


def at_bounds(profile: CostProfile, bounds: Bounds = BOUNDS) -> list[str]:
    """Coefficients the fit pushed onto a bound: the data could not place them (or the model lacks physics)."""
    flagged = []
    for key in FITTED:
        lo, hi = bounds[key]
        value = getattr(profile, key)
        if (lo > 0 and value <= lo * (1 + 1e-6)) or value >= hi * (1 - 1e-6):
            flagged.append(f"{key}={value:.4g} at its bound [{lo:g}, {hi:g}]")
    return flagged


def unplaced_launch(setup: Setup, profile: CostProfile, points: Sequence[Point]) -> list[str]:
    """launch_prefill_s only shows in a step whose GPU work is shorter: say so when no step is launch-bound."""
    cost = setup.cost(replace(profile, launch_prefill_s=0.0, c0_prefill_s=0.0, request_cpu_s=0.0, token_cpu_s=0.0))
    shortest = min(cost.extend_time(step) for p in points for step in p.steps)
    if profile.launch_prefill_s < shortest:
        return [f"launch_prefill_s={profile.launch_prefill_s:.4g} is below every step's GPU time "
                f"(shortest {shortest * 1e3:.2f} ms): no measured step is launch-bound"]
    return []


def calibrate(rounds: Iterable[dict[str, Any]], start: CostProfile | None = None,
              validate: bool = False, caps: dict[str, float] | None = None) -> tuple[CostProfile, Fit]:
    """The profile that best predicts the measured LOCAL batch latencies (robust fit of relative error);
    validate: also the cross-validated errors (refits leaving one level of each axis out); caps: efficiency
    ceilings measured by `ppd microbench` on that GPU."""
    setup, points, notes = collect(rounds)
    if len(points) < 3:
        raise ConfigError(f"only {len(points)} measured point(s); calibrating {len(FITTED)} coefficients "
                          "needs a grid of at least 3 (better: --ppd-grid=calibrate, quick or full)")
    bounds = bounds_with(caps)
    if caps:
        notes.append("efficiency ceilings from ppd microbench: " + ", ".join(f"{k}<={v:.3g}" for k, v in caps.items()))
    base = start or CostProfile(name=f"calibrated-{setup.gpu.name}-{setup.model.name}")
    base = replace(base, **{k: min(getattr(base, k), hi) for k, (_, hi) in bounds.items() if k in EFFICIENCY_CAPS})
    profile = _fit(setup, points, base, bounds)
    rows = []
    for p, err in zip(points, _errors(setup, profile, points)):
        rows.append({"bs": p.bs, "L": p.L, "m": p.m, "n": p.n, "measured_ms": p.measured_ms,
                     "predicted_ms": p.measured_ms * (1 + err), "error": err})
    errors = np.abs([r["error"] for r in rows])
    cv = cross_validated(setup, points, base, bounds) if validate else {}
    return profile, Fit(setup.model.name, setup.gpu.name, rows, float(np.median(errors)), float(errors.max()), cv,
                        at_bounds(profile, bounds) + unplaced_launch(setup, profile, points), notes)
