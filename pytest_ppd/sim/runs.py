"""Decode runs: the decode steps of an unchanged batch, simulated as one event of the deployment.

Between two events that reach an engine (a request added, a request finished) its decode steps are
fixed: the same requests, each context one token longer per step. The deployment asks the engine for
all of them at once (``Engine.decode_run``), schedules one event at the end of the last, and cuts the
run short when an outside event reaches the engine, after the step then under way (what the engine would
have seen at that step's end). Times, tokens and pool accounting are those of stepping one at a time,
bit for bit; only the events in between are never created.

    run = DecodeRun.start(batch, engine.decode_run(batch), now_ns)
    run.apply(engine, run.in_progress(now_ns, inclusive=True) - 1, flights)   # steps over by now
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from pytest_ppd.sim.engine import Batch, Engine
from pytest_ppd.sim.nodes import NS


@dataclass(eq=False)
class DecodeRun:
    """Steps 1..last of one decode batch; ``applied`` of them are in the requests and the clients' handles."""

    batch: Batch  # its first step, as the engine scheduled it
    durations: list[float]
    ends_ns: list[int]  # when each step ends
    last: int
    applied: int = 0

    @classmethod
    def start(cls, batch: Batch, durations: list[float], now_ns: int) -> "DecodeRun":
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

    def final_batch(self) -> Batch:
        """The last step as a plain batch, to complete as any other (it finishes requests)."""
        return Batch("decode", self.batch.items, self.durations[self.last - 1])

    def apply(self, engine: Engine, upto: int, flights: dict[int, Any]) -> None:
        """Apply steps applied+1..upto (none finishes a request) to the engine and to each request's
        handle (flights: id(SimRequest) -> flight with .handle and .stretch_ns), as steps one at a time would."""
        if upto <= self.applied:
            return
        times = self.ends_ns[self.applied:upto]
        for (req, _), ids in zip(self.batch.items, engine.advance(self.batch, upto - self.applied)):
            flight = flights.get(id(req))
            if flight is None or not ids:
                continue
            handle, stretch = flight.handle, flight.stretch_ns
            handle.token_ns += times if not stretch else [t + stretch for t in times]
            handle.output_ids += ids
        self.applied = upto
