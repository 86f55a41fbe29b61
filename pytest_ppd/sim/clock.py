"""Drivers of one engine core: the wall clock of the served sim (asyncio), and a bare virtual-time
loop over a single engine for unit-level work (calibration's step recording, engine tests).
Deployments (several engines, KV links, a router, clients) run in ``sim/deployment.py``.

The loop only orders events by (time, kind, sequence); costs come from the
engine's cost model::

    sim = VirtualRunner(engine)
    sim.submit(SimRequest("a", ids, max_new_tokens=4, arrival_s=0.0))
    sim.run()                  # advances virtual time to the last event
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable

from pytest_ppd.sim.engine import Batch, Engine, Event, SimRequest

_ARRIVAL, _STEP_DONE = 0, 1


class VirtualRunner:
    """Discrete-event driver: deterministic, no sleeping, for cluster-scale studies."""

    def __init__(self, engine: Engine, on_event: Callable[[Event, float], None] | None = None) -> None:
        self.engine, self.on_event = engine, on_event
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._busy = False
        self.finished: list[SimRequest] = []

    def submit(self, req: SimRequest) -> None:
        heapq.heappush(self._heap, (req.arrival_s, _ARRIVAL, next(self._seq), req))

    def _kick(self) -> None:
        if self._busy:
            return
        batch = self.engine.schedule(self.now)
        if batch is not None:
            self._busy = True
            heapq.heappush(self._heap, (self.now + batch.duration_s, _STEP_DONE, next(self._seq), batch))

    def run(self, until_s: float = float("inf")) -> float:
        """Process events up to until_s; returns the virtual time reached."""
        while self._heap and self._heap[0][0] <= until_s:
            when = self._heap[0][0]
            self.now = when
            # Everything due at this instant happens before the scheduler looks (simultaneous arrivals batch).
            while self._heap and self._heap[0][0] == when:
                _, kind, _, payload = heapq.heappop(self._heap)
                if kind == _ARRIVAL:
                    self.engine.add(payload)  # type: ignore[arg-type]
                    continue
                self._busy = False
                for event in self.engine.complete(payload, when):  # type: ignore[arg-type]
                    if event.finished:
                        self.finished.append(event.req)
                    if self.on_event:
                        self.on_event(event, when)
            self._kick()
        return self.now


class WallClockRunner:
    """Asyncio driver: steps take real time, measured on time.perf_counter()."""

    def __init__(self, engine: Engine, deliver: Callable[[Event], None]) -> None:
        self.engine, self.deliver = engine, deliver
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.steps = 0
        self.lateness_s = 0.0  # accumulated oversleep of the event loop (sim's own overhead)

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def notify(self) -> None:
        """Something changed (a request arrived or left): reconsider scheduling."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            # The step starts when scheduling starts: the scheduler's own CPU time (radix matches over
            # long prompts) overlaps the modeled step, as SGLang's overlap scheduler hides it behind the GPU.
            start = self.now()
            batch: Batch | None = self.engine.schedule(start)
            if batch is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            end = start + batch.duration_s
            delay = end - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            finished_at = self.now()
            self.lateness_s += max(finished_at - end, 0.0)
            self.steps += 1
            for event in self.engine.complete(batch, finished_at):
                self.deliver(event)
            await asyncio.sleep(0)  # let handlers of delivered tokens and new arrivals run
