"""Decode runs: the decode steps of an unchanged batch, simulated as one event of the deployment.

Between two events that reach an engine (a request added, a request finished) its decode steps are
fixed: the same requests, each context one token longer per step. The deployment asks the engine for
all of them at once (``decode_run``), schedules one event at the end of the last, and cuts the
run short when an outside event reaches the engine, after the step then under way (what the engine would
have seen at that step's end). Times, tokens and pool accounting are those of stepping one at a time,
bit for bit; only the events in between are never created.

    run = DecodeRun.start(batch, decode_run(engine, batch), now_ns)
    run.apply(engine, run.in_progress(now_ns, inclusive=True) - 1, flights)   # steps over by now
    run.finish(engine, flights, now_s)        # at its end: the requests it finished
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from importlib.machinery import EXTENSION_SUFFIXES
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

from pytest_ppd.sim.native import trait

import numpy as np

from pytest_ppd.sim.costmodel import VECTOR_STEPS
from pytest_ppd.sim.engine import Batch, Engine
from pytest_ppd.sim.nodes import NS, Node, keep_ends

STEP_DONE = 2  # the deployment's event kind (sim/deployment.py)
_STRIDE: Final = 2654435761  # Engine._next_token's step from one of a request's tokens to the next
_COMPILED: Final = __file__.endswith(tuple(EXTENSION_SUFFIXES))  # this module runs compiled (PPD_COMPILE=1)


def _round_half_even(x: float) -> int:
    """round(x) for 0 <= x < 2**52: x - floor(x) is exact there."""
    whole = int(x)
    frac = x - whole
    return whole + 1 if frac > 0.5 or (frac == 0.5 and whole & 1) else whole


def decode_run(engine: Engine, batch: Batch) -> list[float] | np.ndarray | None:
    """Step times of the decode steps ``batch`` starts, up to the first that finishes a request, when only an
    outside event can change them: nothing waits, and every request in it is past its first token. None when
    that does not hold or the run is one step."""
    contexts = batch.contexts
    if (contexts is None or len(contexts) != len(batch.items) or engine.waiting or engine.prefilled
            or engine.chunking is not None or engine.mode == "prefill"):
        return None  # not a decode batch, or one with a request at its first token, or a queue
    steps = min([r.max_new_tokens - len(r.output_ids) for r, _ in batch.items])
    if steps < 2:
        return None
    eager = engine.graph_max_bs is not None and len(batch.items) > engine.graph_max_bs
    return engine.cost.decode_step_times(contexts, steps, eager)


@dataclass(eq=False)
class DecodeRun:
    """Steps 1..last of one decode batch; ``applied`` of them are in the requests and the clients' handles."""

    batch: Batch  # its first step, as the engine scheduled it
    durations: list[float] | np.ndarray
    ends_ns: list[int]  # when each step ends
    last: int
    applied: int = 0

    @classmethod
    def start(cls, batch: Batch, durations: list[float] | np.ndarray, now_ns: int) -> "DecodeRun":
        if isinstance(durations, np.ndarray) or len(durations) >= VECTOR_STEPS:
            # as the loop, on arrays: round half to even, at least 1 ns a step, summed from now_ns
            steps = np.maximum(np.rint(np.asarray(durations) * NS), 1).astype(np.int64)
            steps[0] += now_ns
            ends = np.cumsum(steps).tolist()
        elif _COMPILED:  # the same sums, in a loop a compiled build runs natively (round() would not)
            ends, at = [], now_ns
            for d in durations:
                at += max(_round_half_even(d * NS), 1)
                ends.append(at)
        else:
            ends = list(accumulate([max(int(round(d * NS)), 1) for d in durations], initial=now_ns))[1:]
        return cls(batch, durations, ends, len(ends))

    @property
    def end_ns(self) -> int:
        return self.ends_ns[self.last - 1]

    def in_progress(self, now_ns: int, inclusive: bool) -> int:
        """The step under way at now_ns (1-based). inclusive: a step ending at now_ns is over (the event
        asking comes after step ends at the same instant)."""
        find = bisect_right if inclusive else bisect_left
        return min(find(self.ends_ns, now_ns, 0, self.last) + 1, self.last)

    def cut(self, step: int) -> tuple[int, int]:
        """End the run after ``step``; the (ns, steps) dropped from it."""
        dropped = (self.end_ns - self.ends_ns[step - 1], self.last - step)
        self.last = step
        return dropped

    def finish(self, engine: Engine, flights: dict[int, Any], now_s: float, every: bool = True) -> list[Any]:
        """The run's end: every step applied (the last allocates no next slot), then the requests that have
        all their tokens finished in the engine, in batch order; those requests."""
        self.apply(engine, self.last, flights, final=True, every=every)
        done = [r for r, _ in self.batch.items if not r.aborted and len(r.output_ids) >= r.max_new_tokens]
        for req in done:
            engine.finish(req, now_s)
        return done

    def apply(self, engine: Engine, upto: int, flights: dict[int, Any], final: bool = False,
              every: bool = True) -> None:
        """Apply steps applied+1..upto (none but the run's last, when final, finishes a request) to the engine
        (the requests' ids, which their handles share) and the steps' times to each request's handle (flights:
        id(SimRequest) -> flight with .handle and .stretch_ns), as steps one at a time would; every=False:
        only the first and the last token's times (nodes.keep_ends)."""
        if upto <= self.applied:
            return
        steps, times, vocab = upto - self.applied, self.ends_ns[self.applied:upto], engine.vocab
        owns, span = steps - 1 if final else steps, _STRIDE * steps  # a step allocates its next one's slot
        get, first_ns, last_ns = flights.get, times[0], times[-1]
        for req, _ in self.batch.items:
            if req.aborted:
                continue
            out = req.output_ids
            first = req.token_base + _STRIDE * (len(out) + 1)  # Engine._next_token's, stepped
            out += [x % vocab for x in range(first, first + span, _STRIDE)]
            req.owned += owns
            flight = get(id(req))
            if flight is None:
                continue
            # the ids are in its handle already (one list); their times
            stretch, token_ns = flight.stretch_ns or 0, flight.handle.token_ns
            if every:
                token_ns += times if not stretch else [t + stretch for t in times]
            elif len(token_ns) > 1:  # nodes.keep_ends, inline: the usual case, a token before and one since
                token_ns[-1] = last_ns + stretch
            else:
                keep_ends(token_ns, steps, first_ns + stretch, last_ns + stretch)
        self.applied = upto


@trait  # a mixin of Deployment (mypyc: a compiled class has one base class, plus traits)
class DecodeRuns:
    """Mixed into Deployment: start, cut short and settle each engine's decode run."""

    now_ns: int
    nodes: list[Node]
    token_times: bool
    _flights: dict[int, Any]

    def _push(self, at_ns: int, kind: int, payload: Any, place: int = 0, seq: int | None = None) -> None:
        raise NotImplementedError  # Deployment's

    def _start_run(self, node: Node, batch: Batch, durations: list[float] | np.ndarray) -> None:
        run = node.run = DecodeRun.start(batch, durations, self.now_ns)
        node.steps, node.busy_ns = node.steps + run.last, node.busy_ns + run.end_ns - self.now_ns
        self._push(run.end_ns, STEP_DONE, (node, run), node.index)

    def _touch(self, node: Node, inclusive: bool) -> None:
        """An outside event reaches node's engine now: a decode run stops after the step under way."""
        run = node.run
        if run is None:
            return
        step = run.in_progress(self.now_ns, inclusive)
        run.apply(node.engine, step - 1, self._flights, every=self.token_times)
        if step < run.last:
            dropped_ns, dropped = run.cut(step)
            node.busy_ns, node.steps = node.busy_ns - dropped_ns, node.steps - dropped
            self._push(run.end_ns, STEP_DONE, (node, run), node.index)

    def _settle(self) -> None:
        """Before clients look: every decode run's steps over by now are in their handles."""
        for node in self.nodes:
            if node.run is not None:
                node.run.apply(node.engine, node.run.in_progress(self.now_ns, True) - 1, self._flights,
                               every=self.token_times)
