"""The deployment simulator (sim/deployment.py) with a cluster's router in front: policies, conditional
disaggregation, sessions, and a hook when a request is answered.

    dep = RoutedDeployment(prefill=[p_cfg] * 2, decode=[c_cfg] * 6, policy="cache", rule=parse_rule("vllm-ppd"))
    dep.on_done = lambda handle: ...                       # called at the virtual time of its last token
    h = dep.submit_turn(ids, 150, rid="s3/2", session="s3")

It changes nothing in how engines, links and the clock work; it only overrides ``Deployment.route``
(which engines a request goes to) and watches ``_answered`` for finished requests.

- colocated (aggregated): the policy picks one engine.
- P/D: the policy picks the decode engine, then (``prefill_policy``) the prefill engine.
- conditional P/D: decode engines are *colocated* engines (SGLang's decode mode cannot prefill); the rule
  decides from what the chosen decode engine's radix cache lacks and the prefill queues: LOCAL runs the
  prefill there (in its own batches, prefill first, so it delays that engine's decode steps), REMOTE
  runs it on a prefill engine and moves only the KV the decode engine lacks over its link.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

from pytest_ppd.cluster.routers import Rule, make_policy
from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.args import SimConfig
from pytest_ppd.sim.deployment import Deployment, _Flight
from pytest_ppd.sim.nodes import Node, Request


class RoutedDeployment(Deployment):
    """A Deployment whose router is a policy (rr, cache, sticky) plus an optional conditional rule."""

    def __init__(self, *, colocated: Sequence[SimConfig] = (), prefill: Sequence[SimConfig] = (),
                 decode: Sequence[SimConfig] = (), policy: str = "rr", prefill_policy: str | None = None,
                 rule: Rule | None = None, bootstrap_s: float = 0.0) -> None:
        super().__init__(colocated=colocated, prefill=prefill, decode=decode, bootstrap_s=bootstrap_s)
        prefilling = [n.name for n in self.decode if n.role == "colocated"]
        if rule is not None and len(prefilling) != len(self.decode):
            raise ConfigError("conditional disaggregation needs decode engines that can prefill: give "
                              "decode=[...] colocated configs (no --disaggregation-mode)")
        if rule is None and prefilling:
            raise ConfigError(f"{prefilling[0]} is a colocated engine in the decode group: that is conditional "
                              "disaggregation, which needs a rule (dynamo-v0, vllm-ppd, llmd)")
        self.policy = make_policy(policy)
        self.prefill_policy = make_policy(prefill_policy or policy)
        self.rule = rule
        self.on_done: Callable[[Request], None] | None = None
        self.sessions: dict[str, str] = {}  # rid -> session id, for session-aware policies
        self.in_flight: Counter[str] = Counter()  # engine name -> requests it serves, routed and not answered

    def submit_turn(self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str, session: str | None = None,
                    at_ns: int | None = None, key: bytes | None = None) -> Request:
        """submit() for a request of a session (ids in range by construction)."""
        if session is not None:
            self.sessions[rid] = session
        handle = self.submit(input_ids, max_new_tokens, rid=rid, at_ns=at_ns, check_ids=False, key=key)
        self.sessions.pop(rid, None)
        if handle.done and handle.engine is not None:  # refused (or no tokens asked): answered at once
            self.in_flight[handle.engine] -= 1
        return handle

    def loads(self, nodes: Sequence[Node]) -> list[int]:
        """Each engine's requests in flight: the router's count for serving engines, the queue and batch of a
        prefill engine."""
        count = self.in_flight
        return [len(n.engine.waiting) + len(n.engine.running) if n.role == "prefill" else count[n.name]
                for n in nodes]

    def prefill_queue(self) -> int:
        """Requests waiting for a prefill engine to admit them (what Dynamo's rule reads)."""
        return sum(len(n.engine.waiting) for n in self.prefill)

    def route(self, handle: Request) -> tuple[Node, Node | None]:
        ids, session = handle.key, self.sessions.get(handle.rid)  # the key: policies walk radix trees
        serving = self.policy.pick(self.colocated or self.decode, ids, session, self.loads)
        self.in_flight[serving.name] += 1
        if not self.prefill:
            return serving, None
        if self.rule is not None:
            prompt = len(handle.input_ids)  # SGLang never reuses the last token:
            cached = serving.engine.cache.match_prefix(ids, prompt - 1).length
            if self.rule.local(prompt - cached, self.prefill_queue()):
                return serving, None
        return serving, self.prefill_policy.pick(self.prefill, ids, session, self.loads)

    def _answered(self, flight: _Flight) -> None:
        self.in_flight[flight.serving.name] -= 1
        if self.on_done is not None:
            self.on_done(flight.handle)

    # -- meters -------------------------------------------------------------------
    @property
    def kv_bytes(self) -> int:
        """Bytes of KV moved from prefill to decode engines (only what each decode engine lacked)."""
        return sum(n.kv_tokens_in * n.cfg.model.kv_bytes_per_token for n in self.decode)

    def busy_fraction(self, span_ns: int) -> float:
        """Mean over engines of (sum of its step times) / span: how busy the GPUs were."""
        if span_ns <= 0:
            return 0.0
        return sum(min(n.busy_ns / span_ns, 1.0) for n in self.nodes) / len(self.nodes)
