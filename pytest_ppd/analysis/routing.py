"""LOCAL vs REMOTE routing of append-prefill: the AppendRouter (the fixed rules it competes with, and
the measured ground truth they are judged on, live in analysis/policies.py).

Both sides run the same engine on the same GPU type, so one step-time model
serves both, per operator class as DESIGN.md's cost model:
T(bs, L, m) = c + s_lin * W_lin + s_attn * W_attn, where W_lin = max(F_linear/P,
B_weights/W) and W_attn = max(F_attn/P, B_kv/W) are the classes' rooflines at
peak (analysis/roofline.py) and c, s_lin, s_attn are learned online (each s >= 1:
no class beats its roofline, so no prediction beats the floor). Then

    LOCAL  = c + Work(m)                       + w * (Work(m) - Work(1))   (interference on D's decoders)
    REMOTE = KV(L) to P unless P holds it  + c + Work(m) + KV(L+m) to D  + queue at P

with KV bytes = BS x tokens x the model's KV bytes per token and transfer time
= bytes / bandwidth + latency. REMOTE - LOCAL is then concave in m and
positive at m = 1, so as m grows the decision changes at most once. A relative
hysteresis band keeps decisions from flapping near the boundary, and every
decision carries its cost breakdown::

    router = AppendRouter("Llama-3.1-8B", "H100-SXM")
    router.decide(16, 4096, 512).route          # "local"
    router.observe("local", 16, 4096, 512, 120.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from pytest_ppd.roofline import append_work, operator_times_s
from pytest_ppd.specs import GpuSpec, LinkSpec, ModelSpec, gpu_spec, link_spec, model_spec

LOCAL, REMOTE = "local", "remote"


@dataclass(frozen=True)
class RouterParams:
    """Time coefficients (seconds, seconds per byte) and dimensionless weights of the router."""

    c_s: float = 0.010  # fixed cost of one append (HTTP, scheduling, launch)
    s_lin: float = 1.4  # latency per second of the linear layers' roofline
    s_attn: float = 1.8  # latency per second of attention's roofline
    link_s_per_byte: float = 1 / 50e9
    link_latency_s: float = 10e-6
    queue_s: float = 0.0  # waiting at P, plus the router hop
    interference_weight: float = 0.0
    hysteresis: float = 0.0  # relative band: switch only when the other route is this much cheaper

    def __post_init__(self) -> None:
        for name in ("c_s", "link_s_per_byte", "link_latency_s", "queue_s", "interference_weight", "hysteresis"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RouterParams.{name} must be finite and >= 0, got {value}")
        for name in ("s_lin", "s_attn"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"RouterParams.{name} must be finite and > 0, got {value}")
        if self.hysteresis >= 1:
            raise ValueError(f"RouterParams.hysteresis must be < 1, got {self.hysteresis}")

    @classmethod
    def for_link(cls, link: LinkSpec | str, **kw: float) -> "RouterParams":
        lk = link_spec(link)
        return cls(link_s_per_byte=1 / lk.bytes_per_s, link_latency_s=lk.latency_s, **kw)

    def scaled(self, k: float) -> "RouterParams":
        """Every time coefficient times k (decisions must not change)."""
        return replace(self, c_s=self.c_s * k, s_lin=self.s_lin * k, s_attn=self.s_attn * k,
                       link_s_per_byte=self.link_s_per_byte * k,
                       link_latency_s=self.link_latency_s * k, queue_s=self.queue_s * k)


@dataclass(frozen=True)
class RouteCost:
    route: str
    parts_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.parts_s.values())


@dataclass(frozen=True)
class Decision:
    route: str
    local: RouteCost
    remote: RouteCost
    held_by_hysteresis: bool = False

    @property
    def cheaper(self) -> str:
        return LOCAL if self.local.total_s <= self.remote.total_s else REMOTE


class _OnlineLeastSquares:
    """Weighted least squares y ~ X b with exponential forgetting and lower bounds on b."""

    def __init__(self, k: int, lower: list[float], forget: float) -> None:
        self.k, self.lower, self.forget = k, np.asarray(lower, float), forget
        self.xtx = np.zeros((k, k))
        self.xty = np.zeros(k)
        self.n = 0

    def add(self, x: list[float], y: float, w: float) -> None:
        v = np.asarray(x, float)
        self.xtx = self.forget * self.xtx + w * np.outer(v, v)
        self.xty = self.forget * self.xty + w * y * v
        self.n += 1

    def solve(self) -> np.ndarray | None:
        """Active-set solve: coefficients below their bound are pinned there and the rest re-fit."""
        if self.n < self.k:
            return None
        fixed = np.zeros(self.k, bool)
        b = np.array(self.lower)
        for _ in range(self.k + 1):
            free = ~fixed
            rhs = self.xty[free] - self.xtx[np.ix_(free, fixed)] @ b[fixed]
            sol, *_ = np.linalg.lstsq(self.xtx[np.ix_(free, free)], rhs, rcond=None)
            b[free] = sol
            low = free & (b < self.lower)
            if not low.any():
                return b
            fixed |= low
            b[fixed] = self.lower[fixed]
        return b


@dataclass
class AppendRouter:
    """Decides LOCAL or REMOTE per append batch; learns its coefficients from observed latencies."""

    model: ModelSpec | str
    gpu: GpuSpec | str  # D's: where LOCAL runs
    params: RouterParams = field(default_factory=RouterParams)
    forget: float = 0.98
    prefill_gpu: GpuSpec | str | None = None  # P's, where REMOTE prefills (default: the same as D's)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "params":  # costs are cached per shape; new coefficients invalidate them
            self.__dict__["_cost_cache"] = {}
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        self.model = model_spec(self.model)
        self.gpu = gpu_spec(self.gpu)
        self.prefill_gpu = gpu_spec(self.prefill_gpu) if self.prefill_gpu is not None else self.gpu
        self._last: dict[object, str] = {}
        self._local = _OnlineLeastSquares(3, [0.0, 1.0, 1.0], self.forget)
        self._remote = _OnlineLeastSquares(2, [0.0, 0.0], self.forget)
        self._work_cache: dict[tuple[int, int, int, bool], tuple[float, float]] = {}
        # Already set (empty) by __setattr__ when __init__ assigned params; reset on every new params.
        self._cost_cache: dict[tuple[int, int, int, bool], tuple[RouteCost, RouteCost]] = {}

    # -- the model -----------------------------------------------------------
    def _check(self, bs: int, L: int, m: int) -> None:
        for name, v in (("bs", bs), ("L", L), ("m", m)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if bs < 1 or L < 0 or m < 1:
            raise ValueError(f"need bs >= 1, L >= 0, m >= 1; got bs={bs}, L={L}, m={m}")
        limit = self.model.context_length  # type: ignore[union-attr]
        if L + m > limit:
            raise ValueError(f"L+m = {L + m} exceeds {self.model.name}'s context length {limit}")  # type: ignore[union-attr]

    def rooflines_s(self, bs: int, L: int, m: int, on_p: bool = False) -> tuple[float, float]:
        """(W_lin, W_attn): each operator class's time at 100% of peak FLOP/s or HBM bandwidth, on D's
        GPU or (on_p) on P's."""
        key = (bs, L, m, on_p)
        if key not in self._work_cache:
            w = append_work(self.model, bs, L, m)  # type: ignore[arg-type]
            g: GpuSpec = self.prefill_gpu if on_p else self.gpu  # type: ignore[assignment]
            self._work_cache[key] = operator_times_s(w, g, self.model)  # type: ignore[arg-type]
        return self._work_cache[key]

    def work_s(self, bs: int, L: int, m: int, on_p: bool = False) -> float:
        """Predicted compute time of the append, without the fixed cost c."""
        lin, attn = self.rooflines_s(bs, L, m, on_p)
        return self.params.s_lin * lin + self.params.s_attn * attn

    def kv_bytes(self, bs: int, tokens: int) -> float:
        """KV of `tokens` tokens for each of bs conversations, from the model config."""
        return float(bs) * tokens * self.model.kv_bytes_per_token  # type: ignore[union-attr]

    def transfer_s(self, nbytes: float) -> float:
        p = self.params
        return nbytes * p.link_s_per_byte + p.link_latency_s

    def costs(self, bs: int, L: int, m: int, p_holds_context: bool = False) -> tuple[RouteCost, RouteCost]:
        key = (bs, L, m, p_holds_context)
        cached = self._cost_cache.get(key)
        if cached is None:
            cached = self._cost_cache[key] = self._costs(bs, L, m, p_holds_context)
        return cached

    def _costs(self, bs: int, L: int, m: int, p_holds_context: bool) -> tuple[RouteCost, RouteCost]:
        self._check(bs, L, m)
        p = self.params
        w = self.work_s(bs, L, m)
        extra = max(w - self.work_s(bs, L, 1), 0.0)
        local = RouteCost(LOCAL, {"overhead": p.c_s, "prefill_on_D": w,
                                  "interference": p.interference_weight * extra})
        remote = RouteCost(REMOTE, {
            "kv_L_to_P": 0.0 if p_holds_context else self.transfer_s(self.kv_bytes(bs, L)),
            "overhead": p.c_s, "prefill_on_P": w if self.prefill_gpu is self.gpu else self.work_s(bs, L, m, True),
            "kv_to_D": self.transfer_s(self.kv_bytes(bs, L + m)), "queue_at_P": p.queue_s,
        })
        return local, remote

    def decide(self, bs: int, L: int, m: int, p_holds_context: bool = False, key: object = None) -> Decision:
        """The cheaper route, unless the route last chosen for `key` is within the hysteresis band."""
        local, remote = self.costs(bs, L, m, p_holds_context)
        best = LOCAL if local.total_s <= remote.total_s else REMOTE
        route, held = best, False
        if key is not None and self.params.hysteresis > 0 and key in self._last:
            last = self._last[key]
            cost = {LOCAL: local.total_s, REMOTE: remote.total_s}
            if best != last and cost[best] > cost[last] * (1 - self.params.hysteresis):
                route, held = last, True
        if key is not None:
            self._last[key] = route
        return Decision(route, local, remote, held)

    # -- online estimation ----------------------------------------------------------
    def observe(self, path: str, bs: int, L: int, m: int, latency_ms: float, p_holds_context: bool = True) -> None:
        """Learn from one measured batch latency (relative-error weights, exponential forgetting)."""
        self._check(bs, L, m)
        y = latency_ms / 1e3
        if not (math.isfinite(y) and y > 0):
            raise ValueError(f"latency must be finite and > 0, got {latency_ms}")
        if path == LOCAL:
            lin, attn = self.rooflines_s(bs, L, m)
            self._local.add([1.0, lin, attn], y, 1 / (y * y))
            fit = self._local.solve()
            if fit is not None:
                self.params = replace(self.params, c_s=float(fit[0]), s_lin=float(fit[1]), s_attn=float(fit[2]))
        elif path == REMOTE:
            p = self.params
            nbytes = self.kv_bytes(bs, L + m) + (0.0 if p_holds_context else self.kv_bytes(bs, L))
            residual = y - (p.c_s + self.work_s(bs, L, m, on_p=True))
            self._remote.add([1.0, nbytes / 1e9], residual, 1 / (y * y))  # GB keeps the system well-conditioned
            fit = self._remote.solve()
            if fit is not None and fit[1] > 0:
                self.params = replace(p, queue_s=max(float(fit[0]) - p.link_latency_s, 0.0),
                                      link_s_per_byte=float(fit[1]) / 1e9)
            else:
                self.params = replace(p, queue_s=max(residual - self.transfer_s(nbytes), 0.0))
        else:
            raise ValueError(f"path must be 'local' or 'remote', got {path!r}")
