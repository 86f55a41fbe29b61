"""A P/D deployment in virtual time: engines, KV links, the router and its clients in one process.

The one discrete-event simulator of pytest-ppd. Each engine is the sim's own
``Engine`` core (radix cache, scheduler, chunked prefill, token pool, cost
model); the loop around them orders events by (time, kind, sequence) on an
integer-nanosecond clock and knows nothing of cost. No threads, sockets or
sleeping: the same submissions give bit-identical times on any machine.

    dep = Deployment.from_argvs(prefill=[p_argv], decode=[d_argv])   # P/D behind a router
    req = dep.submit(ids, max_new_tokens=1)                          # at dep.now_ns
    dep.run()                                                        # until nothing is left to do
    req.ttft_ns, req.meta_info["cached_tokens"]

What a request goes through, as in the served sim (``sim/server.py``, ``sim/pd.py``):
- colocated: the engine's per-request overhead (``request_overhead_s``), then its queue and steps;
- P/D: ``route`` picks one prefill and one decode engine (round robin; a colocated engine as decode can prefill);
  both spend their per-request overhead; decode waits for the prefill to finish, then moves the
  KV decode lacks over its link (bandwidth + latency, sim/links.py: one transfer at a time, or
  concurrent ones sharing the bandwidth with --sim-link-sharing fair), plus ``bootstrap_s`` per
  hand-off; the first decode step emits the token the prefill computed.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from typing import Any, Callable, Sequence

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.args import SimConfig, resolve
from pytest_ppd.sim.engine import Batch, SimRequest
from pytest_ppd.sim.nodes import NS, Node, Request, _Flight, keep_ends, meta_info, node_for, refusal, to_ns
from pytest_ppd.sim.links import KV_READY, LINK, KvLinks
from pytest_ppd.sim.runs import STEP_DONE, DecodeRun, DecodeRuns, decode_run

__all__ = ["NS", "Deployment", "Node", "Request", "to_ns"]

# Event kinds, in the order they happen when due at the same instant (a link's, sim/links.py, last).
_ADD, _KV_READY, _STEP_DONE, _CALL, _LINK = 0, KV_READY, STEP_DONE, 3, LINK
_PLACE = operator.attrgetter("index")


class Deployment(KvLinks, DecodeRuns):
    """Engines, links and a router on one virtual clock; see the module docstring."""

    decode_runs = True  # False: every decode step is its own event (the same times; tests compare the two)
    token_times = True  # False: a handle's token_ns keeps only its first and last token's time (cluster replays)

    def __init__(self, *, colocated: Sequence[SimConfig] = (), prefill: Sequence[SimConfig] = (),
                 decode: Sequence[SimConfig] = (), bootstrap_s: float = 0.0) -> None:
        if colocated and (prefill or decode):
            raise ConfigError("a deployment is colocated engines or prefill + decode engines, not both")
        if bool(prefill) != bool(decode):
            raise ConfigError("a P/D deployment needs at least one prefill and one decode engine")
        if not (colocated or prefill):
            raise ConfigError("a deployment needs engines: colocated=[...] or prefill=[...] and decode=[...]")
        self.colocated = [node_for(f"colocated{i}", c, bootstrap_s) for i, c in enumerate(colocated)]
        self.prefill = [node_for(f"prefill{i}", c, bootstrap_s) for i, c in enumerate(prefill)]
        self.decode = [node_for(f"decode{i}", c, bootstrap_s) for i, c in enumerate(decode)]
        for group, role in ((self.colocated, "colocated"), (self.prefill, "prefill"), (self.decode, "decode")):
            wrong = [n.name for n in group if n.role != role and (role, n.role) != ("decode", "colocated")]
            if wrong:
                raise ConfigError(f"{wrong[0]}: its argv sets --disaggregation-mode for another role than {role}")
        self.nodes = self.colocated + self.prefill + self.decode
        for i, node in enumerate(self.nodes):
            node.index = i
        self.now_ns = 0
        self.events = 0  # processed, for events-per-second benchmarks
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq = itertools.count()
        self._rr = {"colocated": itertools.count(), "prefill": itertools.count(), "decode": itertools.count()}
        self._flights: dict[int, _Flight] = {}  # id(SimRequest) -> flight
        self._woken: set[Node] = set()  # engines whose queues or batches changed since they last scheduled
        self._rids = itertools.count()

    @classmethod
    def from_argvs(cls, *, colocated: Sequence[Sequence[str]] = (), prefill: Sequence[Sequence[str]] = (),
                   decode: Sequence[Sequence[str]] = (), bootstrap_s: float = 0.0) -> "Deployment":
        """Engines configured by the sim's command line (SGLang's flags + --sim-*), exactly as served."""
        def parse(argvs: Sequence[Sequence[str]]) -> list[SimConfig]:
            return [resolve(list(a)) for a in argvs]
        return cls(colocated=parse(colocated), prefill=parse(prefill), decode=parse(decode),
                   bootstrap_s=bootstrap_s)

    # -- what clients see -------------------------------------------------------
    @property
    def entry(self) -> list[Node]:
        """The engines whose pools hold a conversation's context (colocated, or prefill)."""
        return self.colocated or self.prefill

    @property
    def pool_tokens(self) -> int:
        return min(n.cfg.pool_tokens for n in self.nodes)

    @property
    def page_size(self) -> int:
        return self.nodes[0].cfg.page_size

    def idle(self) -> bool:
        return not self._flights and all(n.engine.idle() and not n.busy for n in self.nodes)

    def flush(self) -> bool:
        """Empty every engine's prefix cache; refused (False) while anything is in flight."""
        if not self.idle():
            return False
        for node in self.nodes:
            node.engine.flush()
        return True

    def submit(self, input_ids: Sequence[int], max_new_tokens: int, *, at_ns: int | None = None,
               rid: str | None = None, check_ids: bool = True, key: bytes | None = None) -> Request:
        """Send one request (at ``at_ns``, default now); the router picks its engines. check_ids=False
        skips the vocabulary check, for clients whose ids are in range by construction; key: the ids'
        ``radix.encode``, when the client built it along (a conversation's keys grow turn by turn); ids
        given as a view of bytes (``radix.ids_view(key)``) are kept as they are, other ids copied."""
        at = self.now_ns if at_ns is None else at_ns
        if at < self.now_ns:
            raise ValueError(f"cannot send at {at} ns: the clock is already at {self.now_ns} ns")
        immutable = isinstance(input_ids, memoryview) and isinstance(input_ids.obj, bytes)
        ids = input_ids if immutable else list(input_ids)
        handle = Request(rid or f"v{next(self._rids)}", ids, max_new_tokens, at, _key=key)
        serving, prefill = self.route(handle)
        handle.engine, handle.prefill = serving.name, prefill.name if prefill else None
        problem = refusal(handle, prefill or serving, check_ids)
        if problem:
            handle.error, handle.done_ns = problem, at
            return handle
        flight = _Flight(handle, serving, prefill)
        if max_new_tokens == 0:
            handle.done_ns = at
            handle.meta_info = {"prompt_tokens": len(handle.input_ids), "completion_tokens": 0,
                                "cached_tokens": 0, "finish_reason": {"type": "length", "length": 0}}
            return handle
        if prefill is not None:
            flight.p_sim = SimRequest(handle.rid, handle.input_ids, max_new_tokens, arrival_s=at / NS,
                                      _key=handle.key)
            self._flights[id(flight.p_sim)] = flight
            self._push(at + prefill.overhead_ns, _ADD, (prefill, flight.p_sim))
            self._push(at + serving.overhead_ns, _KV_READY, (flight, "decode-ready"))
        else:
            flight.sim = SimRequest(handle.rid, handle.input_ids, max_new_tokens, arrival_s=at / NS,
                                    output_ids=handle.output_ids, _key=handle.key)  # one list: the engine's
            self._flights[id(flight.sim)] = flight
            self._push(at + serving.overhead_ns, _ADD, (serving, flight.sim))
        return handle

    def route(self, handle: Request) -> tuple[Node, Node | None]:
        """(serving engine, prefill engine or None): round robin; cluster/routed.py overrides it."""
        group = self.colocated or self.decode
        serving = group[next(self._rr["colocated" if self.colocated else "decode"]) % len(group)]
        return serving, self.prefill[next(self._rr["prefill"]) % len(self.prefill)] if self.prefill else None

    def abort(self, handle: Request) -> None:
        """The client went away: drop the request wherever it is (its KV is not cached)."""
        for key, flight in list(self._flights.items()):
            if flight.handle is handle:
                for node in (flight.prefill, flight.serving):  # its tokens until now reach it first
                    if node is not None:
                        self._touch(node, inclusive=True)
                del self._flights[key]
                if flight.prefill is not None and flight.p_sim is not None:
                    flight.prefill.engine.abort(flight.p_sim)
                    self._woken.add(flight.prefill)
                if flight.sim is not None:
                    flight.serving.engine.abort(flight.sim)
                    self._woken.add(flight.serving)
        if self.token_times:  # ids the engine made this instant and had not yet delivered never reach it
            del handle.output_ids[len(handle.token_ns):]
        if handle.done_ns is None:
            handle.done_ns, handle.error = self.now_ns, "aborted by the client"

    def call_at(self, at_ns: int, fn: Callable[[], None], seq: int | None = None) -> None:
        """Run fn at a virtual time (a client's next action: a new round, a settle time...); seq: a number
        from ``reserve`` (calls due at the same instant run in the order they were pushed, or reserved)."""
        self._push(at_ns, _CALL, fn, seq=seq)

    def reserve(self, n: int) -> int:
        """The first of n consecutive event numbers, for calls pushed later that must run, when due at the same
        instant as others, as if pushed now (a client feeding its arrivals one at a time)."""
        first = next(self._seq)
        self._seq = itertools.count(first + n)
        return first

    # -- the loop -------------------------------------------------------------------
    def _push(self, at_ns: int, kind: int, payload: Any, place: int = 0, seq: int | None = None) -> None:
        """Due at the same instant: by kind, then place (engines' step ends in engine order), then as pushed."""
        heapq.heappush(self._heap, (at_ns, kind, place, next(self._seq) if seq is None else seq, payload))

    def run(self, until_ns: int | None = None, *, until: Callable[[], bool] | None = None) -> int:
        """Process events up to ``until_ns`` (default: all) or until ``until()`` holds; the time reached."""
        heap, pop, flights = self._heap, heapq.heappop, self._flights
        while heap and (until_ns is None or heap[0][0] <= until_ns):
            if until is not None and until():
                self._settle()
                return self.now_ns
            when = heap[0][0]
            self.now_ns = when
            # Everything due at this instant happens before any engine looks (simultaneous arrivals batch).
            while heap and heap[0][0] == when:
                _, kind, _, _, payload = pop(heap)
                self.events += 1
                if kind == _STEP_DONE:
                    node, step = payload  # unpacked here: a compiled call with *args is a generic one
                    self._step_done(node, step)
                elif kind == _ADD:
                    node, req = payload
                    if id(req) in flights:
                        flights[id(req)].added_ns = when
                        self._touch(node, inclusive=False)
                        node.engine.add(req)
                        self._woken.add(node)
                elif kind == _KV_READY:
                    flight, what = payload
                    self._kv_event(flight, what)
                elif kind == _CALL:
                    payload()
                else:
                    node, version = payload
                    self._link_event(node, version)
            # Only engines this instant touched can have a batch to start: an engine left idle or busy by
            # every event is where the last look left it (its queues, batch and pool are unchanged).
            woken, self._woken = sorted(self._woken, key=_PLACE), set()
            for node in woken:
                self._kick(node)
        if until_ns is not None and until_ns > self.now_ns:
            self.now_ns = until_ns
        self._settle()
        return self.now_ns

    def run_until_done(self, handles: Sequence[Request]) -> int:
        """Run until every handle is done (other traffic, e.g. background streams, keeps going)."""
        self.run(until=lambda: all(h.done for h in handles))
        if not all(h.done for h in handles):
            raise RuntimeError("the deployment ran out of events before every request finished")
        return self.now_ns

    def _kick(self, node: Node) -> None:
        if node.busy:
            return
        batch = node.engine.schedule(self.now_ns / NS)
        if batch is None:
            return
        node.busy, durations = True, decode_run(node.engine, batch) if self.decode_runs else None
        if durations is None:
            step_ns = max(to_ns(batch.duration_s), 1)
            node.steps, node.busy_ns = node.steps + 1, node.busy_ns + step_ns
            self._push(self.now_ns + step_ns, _STEP_DONE, (node, batch), node.index)
        else:  # decode steps nothing inside the engine changes: one event (sim/runs.py)
            self._start_run(node, batch, durations)

    def _step_done(self, node: Node, step: Batch | DecodeRun) -> None:
        if isinstance(step, DecodeRun):
            if node.run is not step or step.end_ns != self.now_ns:
                return  # a run cut short: its end moved earlier
            node.run, node.busy = None, False
            self._woken.add(node)
            for req in step.finish(node.engine, self._flights, self.now_ns / NS, self.token_times):  # all in
                flight = self._flights.get(id(req))
                if flight is not None:
                    assert flight.stretch_ns is not None
                    self._done(flight, req, self.now_ns + flight.stretch_ns)
            return
        node.busy = False
        self._woken.add(node)
        for event in node.engine.complete(step, self.now_ns / NS):
            flight = self._flights.get(id(event.req))
            if flight is None:
                continue
            if node.role == "prefill":
                if event.finished:
                    del self._flights[id(event.req)]
                    flight.prefill_done_ns, flight.prefill_result = self.now_ns, event.req
                    self._kv_event(flight, "prefill-done")
            elif flight.stretch_ns is None or event.finished:
                self._deliver(flight, event.req, event.new_ids, event.finished)
            else:  # a token mid-stream, the most frequent event of all: inline
                at = self.now_ns + flight.stretch_ns
                if self.token_times:
                    flight.handle.token_ns += [at] * len(event.new_ids)
                else:
                    keep_ends(flight.handle.token_ns, len(event.new_ids), at, at)

    def _kv_event(self, flight: _Flight, what: str) -> None:
        """P/D hand-off: once decode is ready and prefill done, move the KV decode lacks, then decode."""
        if what == "decode-ready":
            flight.decode_ready_ns = self.now_ns
        elif what == "kv-arrived":
            assert flight.sim is not None
            if flight.handle.done:  # aborted while its KV was on the wire
                return
            self._flights[id(flight.sim)] = flight
            flight.added_ns = self.now_ns
            self._touch(flight.serving, inclusive=False)
            flight.serving.engine.add(flight.sim)
            self._woken.add(flight.serving)
            return
        if flight.decode_ready_ns is None or flight.prefill_done_ns is None or flight.handle.done:
            return
        done = flight.prefill_result
        assert done is not None and done.output_ids
        node = flight.serving
        lacks = done.prompt_len - node.engine.cache.match_prefix(done.key).length  # decode-mode: 0 cached
        flight.sim = SimRequest(flight.handle.rid, flight.handle.input_ids, flight.handle.max_new_tokens,
                                arrival_s=flight.handle.sent_ns / NS, preset_first_token=done.output_ids[0],
                                preset_cached_tokens=done.cached_tokens, output_ids=flight.handle.output_ids,
                                _key=done.key)
        self._send_kv(node, flight, lacks)

    def _deliver(self, flight: _Flight, req: SimRequest, new_ids: tuple[int, ...], finished: bool) -> None:
        handle = flight.handle
        if flight.stretch_ns is None:  # --sim-slow-prompt: the served sim stretches the time to first token
            factor = flight.serving.slow_prompts.get(req.prompt_len, 1.0)
            flight.stretch_ns = int(round((factor - 1.0) * (self.now_ns - handle.sent_ns)))
        at = self.now_ns + flight.stretch_ns
        if self.token_times:  # its ids are in already: the engine's list is the handle's
            handle.token_ns.extend([at] * len(new_ids))
        else:
            keep_ends(handle.token_ns, len(new_ids), at, at)
        if finished:
            self._done(flight, req, at)

    def _done(self, flight: _Flight, req: SimRequest, at: int) -> None:
        del self._flights[id(req)]
        flight.handle.done_ns = at
        flight.handle.meta_info = meta_info(flight.handle, req, at, flight.added_ns)
        self._answered(flight)

    def _answered(self, flight: _Flight) -> None:
        """Called once per request, at the virtual time of its last token (subclasses watch it here)."""
