"""Replay a trace on a deployment in virtual time: measure, nothing derived (metrics.py derives).

    run = simulate(parse_deployment("2P6D", 8), generate(WORKLOADS["seed003"], requests=100, rate=8))
    run.results[0].ttft_ns, run.span_ns, run.kv_bytes

A single request or first turn is sent at its ``timestamp``; a later turn of a session is sent ``delay``
ms after the previous turn's last token, with the conversation so far (previous input + the answer it
got) then its new tokens, as a chat client does. Every request's token times come from the simulator.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware, build
from pytest_ppd.cluster.routed import RoutedDeployment
from pytest_ppd.cluster.trace import BlockTokens
from pytest_ppd.cluster.workload import Trace
from pytest_ppd.sim.nodes import Request
from pytest_ppd.sim.radix import ids_view
from pytest_ppd.sim.native import picklable

MS = 1_000_000  # ns
Progress = Callable[[int, int, int], None]  # (requests answered, of, virtual now ns)
_watching: ContextVar[Progress | None] = ContextVar("ppd_replay_progress", default=None)


@contextmanager
def watching(progress: Progress | None) -> Iterator[None]:
    """Every replay run here (not in a search's worker processes) reports ``progress(answered, of, now_ns)``
    when it starts (0 answered), about every 0.5% of its requests, and at its end (``ppd cluster``'s bar)."""
    token = _watching.set(progress)
    try:
        yield
    finally:
        _watching.reset(token)


@dataclass(frozen=True)
class RequestResult:
    """One request as the client saw it (times in ns on the virtual clock)."""

    index: int  # in the trace
    session_id: str | None
    prompt_tokens: int
    expected_tokens: int
    output_tokens: int
    cached_tokens: int
    sent_ns: int
    first_ns: int | None
    last_ns: int | None
    engine: str | None
    prefill: str | None  # None: prefilled where it was decoded (aggregated, or LOCAL)
    error: str | None = None

    @property
    def ttft_ns(self) -> int | None:
        """TTFT = first token - sent."""
        return None if self.first_ns is None else self.first_ns - self.sent_ns

    @property
    def e2e_ns(self) -> int | None:
        """E2E = last token - sent."""
        return None if self.last_ns is None else self.last_ns - self.sent_ns

    @property
    def itl_ns(self) -> float | None:
        """Mean ITL (DistServe's TPOT) = (last token - first token) / (output tokens - 1); None for one token."""
        if self.first_ns is None or self.last_ns is None or self.output_tokens < 2:
            return None
        return (self.last_ns - self.first_ns) / (self.output_tokens - 1)

    @property
    def ok(self) -> bool:
        """Answered without error, with exactly the tokens asked for."""
        return self.error is None and self.output_tokens == self.expected_tokens and self.last_ns is not None


@dataclass(frozen=True)
class Run:
    """One replay: every request's result plus what the deployment metered."""

    deployment: str
    gpus: int
    workload: str
    results: tuple[RequestResult, ...]
    span_ns: int  # first send to last token
    kv_bytes: int
    busy_fraction: float
    events: int
    wall_s: float


picklable(RequestResult, Run)

def _result(index: int, session: str | None, expected: int, h: Request) -> RequestResult:
    return RequestResult(index, session, len(h.input_ids), expected, len(h.output_ids),
                         int(h.meta_info.get("cached_tokens", 0)), h.sent_ns,
                         h.token_ns[0] if h.token_ns else None, h.token_ns[-1] if h.token_ns else None,
                         h.engine, h.prefill, h.error)


def replay(dep: RoutedDeployment, trace: Trace, tokens: BlockTokens) -> list[RequestResult]:
    """Send the trace's requests into dep and run it dry; the result of each request, in trace order.

    A request's handle is turned into its result as soon as it is answered and dropped, its ids once its
    session's next turn is sent: a replay holds the tokens of what is in flight, not of the whole trace."""
    reqs = trace.requests
    results: list[RequestResult | None] = [None] * len(reqs)
    following: dict[int, int] = {}  # index -> the index of its session's next turn
    previous: dict[int, int] = {}
    last_of: dict[str, int] = {}
    for i, req in enumerate(reqs):
        if req.session_id is not None and req.session_id in last_of:
            following[last_of[req.session_id]] = i
            previous[i] = last_of[req.session_id]
        if req.session_id is not None:
            last_of[req.session_id] = i
    open_: dict[str, tuple[int, Request]] = {}  # rid -> (index, handle) sent and not answered
    said: dict[int, tuple[Sequence[int], list[int], bytes]] = {}  # index -> (input, answer, input's key)

    def send(i: int) -> None:
        req = reqs[i]
        before = said.pop(previous[i]) if i in previous else None
        if before:
            ids, key = tokens.turn(req, reqs[previous[i]], *before)
        else:
            key = tokens.key(req)
            ids = ids_view(key)
        h = dep.submit_turn(ids, req.output_length, rid=f"r{i}", session=req.session_id, key=key)
        open_[h.rid] = (i, h)
        if h.done:  # refused at once: the session goes on, as a client's would
            answered(h)

    watch, every, count = _watching.get(), max(1, len(reqs) // 200), [0]
    if watch is not None:
        watch(0, len(reqs), dep.now_ns)  # a replay starts

    def answered(h: Request) -> None:
        i, _ = open_.pop(h.rid)
        count[0] += 1
        if watch is not None and count[0] % every == 0:
            watch(count[0], len(reqs), dep.now_ns)
        results[i] = _result(i, reqs[i].session_id, reqs[i].output_length, h)
        nxt = following.get(i)
        if nxt is not None:
            assert h.done_ns is not None
            said[i] = (h.input_ids, h.output_ids, h.key)
            at = max(h.done_ns + (reqs[nxt].delay_ms or 0) * MS, (reqs[nxt].timestamp_ms or 0) * MS)
            dep.call_at(max(at, dep.now_ns), lambda: send(nxt))

    dep.on_done = answered
    dep.token_times = False  # a result reads a handle's first and last token's time, never the ones between
    # Sessions start in time order, each first turn pushed when the one before it is sent (the event heap holds
    # what is in flight, not the whole trace), under the number it would have had pushed all at once here:
    # events due at the same instant run in the same order.
    firsts = [i for i in range(len(reqs)) if i not in previous]
    at = [(reqs[i].timestamp_ms or 0) * MS for i in firsts]
    base, order = dep.reserve(len(firsts)), sorted(range(len(firsts)), key=lambda k: (at[k], k))

    def start(j: int) -> None:
        if j + 1 < len(order):
            k = order[j + 1]
            dep.call_at(at[k], lambda: start(j + 1), seq=base + k)
        send(firsts[order[j]])

    if order:
        dep.call_at(at[order[0]], lambda: start(0), seq=base + order[0])
    # No cyclic collector while it runs: what a replay frees is acyclic (refcounts free it), and each pass
    # would walk every cache node and request in flight again (a third of the wall time, unpaused).
    paused = gc.isenabled()
    gc.disable()
    try:
        dep.run()
    finally:
        dep.token_times = True  # for whoever uses the deployment next
        if paused:
            gc.enable()
    for i, h in open_.values():  # never answered (nothing does that today): as the client saw it
        results[i] = _result(i, reqs[i].session_id, reqs[i].output_length, h)
    if watch is not None and count[0] % every:  # its end, unless that was just reported
        watch(count[0], len(reqs), dep.now_ns)
    return [r if r is not None else
            RequestResult(i, q.session_id, q.input_length, q.output_length, 0, 0, 0, None, None, None, None,
                          "never sent: its session stopped before it")
            for i, (q, r) in enumerate(zip(reqs, results))]


def simulate(spec: DeploymentSpec, trace: Trace, hw: Hardware | None = None, *, salt: int = 0) -> Run:
    """Build the deployment, replay the trace on it, and collect every result."""
    started = time.perf_counter()
    return replay_run(build(spec, hw or Hardware()), trace, spec.label, spec.gpus, salt=salt, started=started)


def replay_run(dep: RoutedDeployment, trace: Trace, label: str, gpus: int, *, salt: int = 0,
               started: float | None = None) -> Run:
    """Replay the trace on a fresh deployment (its planner, if any, already scheduled) and collect the run."""
    started = time.perf_counter() if started is None else started
    tokens = BlockTokens.shared(dep.nodes[0].cfg.model.vocab_size, block_tokens=trace.block_tokens, salt=salt)
    results = replay(dep, trace, tokens)
    sent = [r.sent_ns for r in results if r.error is None or r.last_ns is not None]
    ends = [r.last_ns for r in results if r.last_ns is not None]
    span = max(ends) - min(sent) if ends and sent else 0
    return Run(label, gpus, trace.name, tuple(results), span, dep.kv_bytes,
               dep.busy_fraction(span), dep.events, time.perf_counter() - started)
