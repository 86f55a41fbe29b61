"""P/D deployments whose split changes during a run: engines leave one role, drain, and restart in the other.

    dep = ElasticDeployment(p_cfg, d_cfg, gpus=8, prefill=2, cost=Resplit(drain_s=1.0, startup_s=30.0))
    dep.resplit(4)                   # now: two decode engines leave the router, drain, restart as prefill
    dep.timeline                     # [Split(t_ns, prefill=2, decode=4, moving=2), ...]: P:D over time
    dep.observe()                    # what the frontend metered since the planner last looked (Observed)

What is modelled, on the one simulator (engines, links and clock are sim/deployment.py's, the router
cluster/routed.py's):
- ``resplit(x)`` moves engines until x of them serve prefill or are on their way to it; of the giving
  role, the engines that hold the fewest requests move (ties: the newest), and each role keeps one;
- a moving engine leaves the router at once and finishes everything it holds: its queue and batches and,
  for a decode engine, the hand-offs already bound for it (the drain, simulated: nothing is dropped or
  migrated). It stops once it holds nothing and ``drain_s`` have passed since it left (graceful shutdown:
  deregistration, KV release);
- it is then down for ``startup_s`` (SGLang's restart in the other --disaggregation-mode: weights, CUDA
  graphs) and comes back as a fresh engine of the other role, with an empty cache.

Simplified: a move in progress is never cancelled or reversed; every restart takes the same time; only
xPyD splits (no aggregated engines, no conditional rule) change.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from pytest_ppd.cluster.routed import RoutedDeployment
from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.args import SimConfig
from pytest_ppd.sim.deployment import _Flight
from pytest_ppd.sim.nodes import Node, Request, node_for, to_ns
from pytest_ppd.sim.native import picklable


@dataclass(frozen=True)
class Resplit:
    """What moving one engine to the other role costs: the least drain time and the restart, in seconds."""

    drain_s: float = 1.0
    startup_s: float = 30.0

    def __post_init__(self) -> None:
        if not (self.drain_s >= 0 and self.startup_s >= 0):
            raise ConfigError(f"re-split costs must be >= 0 s, got drain {self.drain_s} s, start-up {self.startup_s} s")


@dataclass(frozen=True)
class Split:
    """P:D at one instant: engines serving prefill, serving decode, and moving (draining or starting)."""

    t_ns: int
    prefill: int
    decode: int
    moving: int


@dataclass(frozen=True)
class Observed:
    """One planner interval as a frontend meters it: arrivals (count, mean ISL) and the requests answered
    in it (mean OSL, TTFT, mean ITL, duration); NaN means where nothing was answered."""

    interval_s: float
    requests: int
    isl: float
    answered: int
    osl: float
    ttft_ms: float
    itl_ms: float
    duration_s: float


@dataclass
class Window:
    """Sums since the planner last looked (ElasticDeployment.observe turns them into Observed)."""

    since_ns: int = 0
    requests: int = 0
    isl: int = 0
    answered: int = 0
    osl: int = 0
    ttft_ns: int = 0
    itl_ns: float = 0.0
    itl_n: int = 0
    duration_ns: int = 0

    def arrived(self, isl: int) -> None:
        self.requests, self.isl = self.requests + 1, self.isl + isl

    def answer(self, h: Request) -> None:
        if h.error is not None or not h.token_ns or h.done_ns is None:
            return
        tokens = len(h.output_ids)  # token_ns may hold only the first and last token's time (token_times)
        self.answered, self.osl = self.answered + 1, self.osl + tokens
        self.ttft_ns += h.token_ns[0] - h.sent_ns
        self.duration_ns += h.done_ns - h.sent_ns
        if tokens > 1:
            self.itl_ns += (h.token_ns[-1] - h.token_ns[0]) / (tokens - 1)
            self.itl_n += 1

    def observed(self, now_ns: int) -> Observed:
        nan, a, n = float("nan"), self.answered, self.requests

        def per(total: float, count: int, unit: float = 1.0) -> float:
            return total / count / unit if count else nan

        return Observed((now_ns - self.since_ns) / 1e9, n, per(self.isl, n), a, per(self.osl, a),
                        per(self.ttft_ns, a, 1e6), per(self.itl_ns, self.itl_n, 1e6), per(self.duration_ns, a, 1e9))


class ElasticDeployment(RoutedDeployment):
    """xPyD on ``gpus`` engines (one per GPU) whose split a planner changes; see the module docstring."""

    def __init__(self, prefill_cfg: SimConfig, decode_cfg: SimConfig, *, gpus: int, prefill: int,
                 policy: str = "rr", cost: Resplit | None = None, bootstrap_s: float = 0.0) -> None:
        if not 1 <= prefill < gpus:
            raise ConfigError(f"an elastic xPyD deployment needs 1 <= x < {gpus} prefill engines, got {prefill}")
        super().__init__(prefill=[prefill_cfg] * prefill, decode=[decode_cfg] * (gpus - prefill), policy=policy,
                         bootstrap_s=bootstrap_s)
        self.gpus, self.cost, self.bootstrap_s = gpus, cost or Resplit(), bootstrap_s
        self.configs = {"prefill": prefill_cfg, "decode": decode_cfg}
        self.held: Counter[str] = Counter()  # prefill engine -> requests routed to it whose prefill runs on
        self.moving: dict[Node, tuple[str, int, int]] = {}  # engine -> (role it takes, left at, may stop at)
        self.starting: Counter[str] = Counter()
        self.retired: list[Node] = []
        self.timeline: list[Split] = [Split(0, prefill, gpus - prefill, 0)]
        self.moves = 0  # engines moved
        self.down_ns = 0  # engine time out of the router: from leaving it to serving again
        self.window = Window()
        self._serial = itertools.count(len(self.nodes))

    # -- the planner's handle -------------------------------------------------------
    def target(self) -> int:
        """Prefill engines serving or on their way to prefill (what the last re-split asked for)."""
        return len(self.prefill) + self.starting["prefill"] + sum(r == "prefill" for r, _, _ in self.moving.values())

    def resplit(self, prefill: int) -> int:
        """Move engines (now) toward ``prefill`` of them on prefill (clipped to 1..gpus-1); how many moved."""
        delta = min(max(prefill, 1), self.gpus - 1) - self.target()
        group, role = (self.decode, "prefill") if delta > 0 else (self.prefill, "decode")
        chosen = sorted(group, key=lambda n: (self._holds(n), -n.index))[: min(abs(delta), len(group) - 1)]
        drain_ns = to_ns(self.cost.drain_s)
        for node in chosen:
            group.remove(node)
            self.moving[node] = (role, self.now_ns, self.now_ns + drain_ns)
            self.call_at(self.now_ns + drain_ns, functools.partial(self._try_stop, node))
        self.moves += len(chosen)
        if chosen:
            self._mark()
        return len(chosen)

    def observe(self) -> Observed:
        """What the frontend metered since the last call; the window then starts over."""
        out, self.window = self.window.observed(self.now_ns), Window(self.now_ns)
        return out

    @property
    def stable(self) -> bool:
        """No engine on the move (what Dynamo's planner waits for before its next adjustment)."""
        return not self.moving and not any(self.starting.values())

    def pending(self) -> bool:
        """Anything left to happen: events scheduled, or requests in flight."""
        return bool(self._heap) or not self.idle()

    # -- moves ------------------------------------------------------------------------
    def _holds(self, node: Node) -> int:
        return self.held[node.name] if node.role == "prefill" else self.in_flight[node.name]

    def _try_stop(self, node: Node) -> None:
        move = self.moving.get(node)
        if move is None or self.now_ns < move[2] or node.busy or not node.engine.idle() or self._holds(node):
            return
        role, left_ns, _ = self.moving.pop(node)
        self.nodes.remove(node)
        self.retired.append(node)
        self.starting[role] += 1
        self.call_at(self.now_ns + to_ns(self.cost.startup_s), lambda: self._start(role, left_ns))

    def _start(self, role: str, left_ns: int) -> None:
        serial = next(self._serial)
        node = node_for(f"{role}{serial}", self.configs[role], self.bootstrap_s)
        node.index = serial
        self.nodes.append(node)
        (self.prefill if role == "prefill" else self.decode).append(node)
        self.starting[role] -= 1
        self.down_ns += self.now_ns - left_ns
        self._mark()

    def _mark(self) -> None:
        moving = len(self.moving) + sum(self.starting.values())
        self.timeline.append(Split(self.now_ns, len(self.prefill), len(self.decode), moving))

    # -- what the router and engines report ----------------------------------------------
    def route(self, handle: Request) -> tuple[Node, Node | None]:
        serving, prefill = super().route(handle)
        if prefill is not None:
            self.held[prefill.name] += 1
        return serving, prefill

    def submit_turn(self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str, session: str | None = None,
                    at_ns: int | None = None, key: bytes | None = None) -> Request:
        self.window.arrived(len(input_ids))
        handle = super().submit_turn(input_ids, max_new_tokens, rid=rid, session=session, at_ns=at_ns, key=key)
        if handle.done and handle.prefill is not None:  # refused: its prefill engine never got it
            self.held[handle.prefill] -= 1
        return handle

    def _kv_event(self, flight: _Flight, what: str) -> None:
        super()._kv_event(flight, what)
        if what == "prefill-done" and flight.prefill is not None:
            self.held[flight.prefill.name] -= 1
            self._try_stop(flight.prefill)

    def _answered(self, flight: _Flight) -> None:
        self.window.answer(flight.handle)
        super()._answered(flight)
        self._try_stop(flight.serving)

    # -- meters: every engine that ran, retired ones included ------------------------------
    @property
    def kv_bytes(self) -> int:
        return sum(n.kv_tokens_in * n.cfg.model.kv_bytes_per_token for n in self.nodes + self.retired
                   if n.role == "decode")

    def busy_fraction(self, span_ns: int) -> float:
        """(sum of every engine's step times) / (GPUs x span)."""
        return min(sum(n.busy_ns for n in self.nodes + self.retired) / (self.gpus * span_ns), 1.0) if span_ns else 0.0


@dataclass(frozen=True)
class Schedule:
    """P:D over a run as a planner left it: the splits, the engines moved and their time out of service."""

    timeline: tuple[Split, ...] = ()
    moves: int = 0
    down_s: float = 0.0
    decisions: tuple[tuple[float, int], ...] = field(default=())  # (t_s, prefill engines asked for)

    def label(self) -> str:
        """The splits in turn, engines on the move as +k: e.g. '2P6D', '5P3D>5P2D+1>6P2D' (long: first, .., last)."""
        seen: list[str] = []
        for s in self.timeline:
            text = f"{s.prefill}P{s.decode}D" + (f"+{s.moving}" if s.moving else "")
            if not seen or seen[-1] != text:
                seen.append(text)
        return ">".join(seen if len(seen) <= 4 else [seen[0], "..", seen[-1]])


picklable(Resplit, Split, Observed, Schedule)
