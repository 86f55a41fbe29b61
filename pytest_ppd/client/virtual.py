"""The measurement protocol in virtual time: the same moves as over HTTP, on a simulated deployment.

A round's requests leave together at the deployment's current virtual time and
come back with the modeled times: nothing of the host enters a latency, and the
same grid and seed give bit-identical records on any machine.

    driver = VirtualDriver(Deployment.from_argvs(colocated=[argv]))
    measure_point(target, point, settings, store, driver=driver)
"""

from __future__ import annotations

from typing import Sequence

from pytest_ppd.analysis.interference import Interference, measure_from_stamps
from pytest_ppd.client.stream import RequestResult
from pytest_ppd.client.workload import Workload
from pytest_ppd.errors import MeasurementError
from pytest_ppd.grid import GridPoint
from pytest_ppd.sim.deployment import NS, Deployment, Request

BACKGROUND_PROMPT = 256  # the served measurement's background streams (client/interference.py)


def as_result(req: Request) -> RequestResult:
    """What the streaming client would have recorded: one content event per token, then [DONE]."""
    if req.error is not None:
        return RequestResult(sent_ns=req.sent_ns, status=400, done_ns=req.done_ns,
                             error=("HTTPStatusError", f"400: {req.error}"))
    return RequestResult(sent_ns=req.sent_ns, first_byte_ns=req.token_ns[0] if req.token_ns else None,
                         event_ns=list(req.token_ns), done_ns=req.done_ns, status=200, saw_done=True,
                         meta_info=dict(req.meta_info), n_output_ids=len(req.output_ids))


class VirtualDriver:
    """flush, warm and round on a Deployment (see client/runner.py's HttpDriver for the served one)."""

    def __init__(self, deployment: Deployment) -> None:
        self.dep = deployment

    async def __aenter__(self) -> "VirtualDriver":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _send(self, prompts: Sequence[list[int]], max_new: int) -> list[Request]:
        handles = [self.dep.submit(ids, max_new, check_ids=False) for ids in prompts]  # Workload ids are in range
        self.dep.run_until_done(handles)
        return handles

    async def flush(self) -> None:
        self.dep.run()  # steps still running for requests a client dropped (SGLang's flush waits too)
        if not self.dep.flush():
            raise MeasurementError("the virtual deployment still has requests in flight; cannot flush")

    async def warm(self, wl: Workload, point: GridPoint) -> None:
        if point.L == 0:
            return
        failed = [h.error for h in self._send([wl.context(c) for c in range(point.bs)], 1) if h.error]
        if failed:
            raise MeasurementError(f"warm-up of {point.id} failed: {failed[0]}")

    async def round(self, wl: Workload, point: GridPoint, round_: int, max_new: int) -> list[RequestResult]:
        return [as_result(h) for h in self._send([wl.prompt(c, round_) for c in range(point.bs)], max_new)]


def background_ids(i: int) -> list[int]:
    """Stream i's prompt, the same ids the served measurement sends."""
    return [2000 + (i * 7919 + j * 104729) % 60000 for j in range(BACKGROUND_PROMPT)]


def measure_interference_virtual(dep: Deployment, wl: Workload, *, background: int = 8, settle_s: float = 0.4,
                                 max_new: int = 400) -> tuple[Interference, float]:
    """(interference, append batch latency in ms): background decode streams, then one round of appends."""
    driver = VirtualDriver(dep)
    point = wl.point
    if point.L:
        driver._send([wl.context(c) for c in range(point.bs)], 1)
    streams = [dep.submit(background_ids(i), max_new) for i in range(background)]
    start = dep.run(dep.now_ns + int(settle_s * NS))
    appends = [dep.submit(wl.prompt(c, 0), 1) for c in range(point.bs)]
    dep.run_until_done(appends)
    end = max(h.token_ns[0] if h.token_ns else dep.now_ns for h in appends)
    dep.run(dep.now_ns + int(settle_s / 2 * NS))
    for h in streams:
        dep.abort(h)
    errors = [h.error for h in appends if h.error]
    if errors:
        raise MeasurementError(f"interference append of {point.id} failed: {errors[0]}")
    stamps = [h.token_ns for h in streams if len(h.token_ns) > 1]
    if not stamps:
        raise MeasurementError("background streams produced no tokens")
    latency_ms = max(h.ttft_ns or 0 for h in appends) / 1e6
    return measure_from_stamps(stamps, start, end), latency_ms
