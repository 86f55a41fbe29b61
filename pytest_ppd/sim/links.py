"""KV links into a decode engine, in virtual time: FIFO (one transfer at a time) or fairly shared.

``fifo``: each hand-off waits for the one before it, then has the whole bandwidth (what the served sim
does). ``fair``: every transfer under way gets bandwidth / n (processor sharing, as concurrent RDMA
transfers through one NIC split it): a hand-off that starts while another runs slows it down, and both
arrive later than the first would alone. Either way the link's latency (and the P/D bootstrap) is
added once per transfer, after its bytes.

    link = SharedLink(bytes_per_s=50e9, fixed_ns=10_000)
    link.start(now_ns, "r1", nbytes)
    link.next_ns()            # when the first transfer under way finishes its bytes, if nothing else starts
    link.finished(now_ns)     # the transfers done by now (their KV arrives fixed_ns later)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Hashable

from pytest_ppd.sim.native import trait

if TYPE_CHECKING:
    from pytest_ppd.sim.nodes import Node

SHARING = ("fifo", "fair")
KV_READY, LINK = 1, 4  # the deployment's event kinds that a hand-off schedules (sim/deployment.py)


class SharedLink:
    """Processor sharing of one link's bandwidth between the transfers under way."""

    def __init__(self, bytes_per_s: float, fixed_ns: int) -> None:
        self.bytes_per_s, self.fixed_ns = bytes_per_s, fixed_ns
        self.left: dict[Hashable, float] = {}  # transfer -> bytes still to move
        self.at_ns = 0  # when `left` was last brought up to date
        self.version = 0  # bumped whenever next_ns() may have changed

    def _advance(self, now_ns: int) -> None:
        if self.left and now_ns > self.at_ns:
            moved = (now_ns - self.at_ns) / 1e9 * self.bytes_per_s / len(self.left)
            for key in self.left:
                self.left[key] -= moved
        self.at_ns = max(self.at_ns, now_ns)

    def start(self, now_ns: int, key: Hashable, nbytes: float) -> None:
        self._advance(now_ns)
        self.left[key] = float(nbytes)
        self.version += 1

    def next_ns(self) -> int | None:
        """When the transfer with the fewest bytes left finishes them, at the current share; None: idle."""
        if not self.left:
            return None
        least = min(self.left.values())
        return self.at_ns + max(math.ceil(least * len(self.left) / self.bytes_per_s * 1e9), 0)

    def finished(self, now_ns: int) -> list[Hashable]:
        """Transfers whose bytes are all through by now (a byte of float error counts as through), in the
        order they started."""
        self._advance(now_ns)
        done = [key for key, left in self.left.items() if left <= 1.0]
        for key in done:
            del self.left[key]
        if done:
            self.version += 1
        return done


@trait  # a mixin of Deployment (mypyc: a compiled class has one base class, plus traits)
class KvLinks:
    """Mixed into Deployment: each hand-off's KV over the decode engine's link, FIFO or fairly shared."""

    now_ns: int

    def _push(self, at_ns: int, kind: int, payload: Any, place: int = 0, seq: int | None = None) -> None:
        raise NotImplementedError  # Deployment's

    def _send_kv(self, node: "Node", flight: Any, tokens: int) -> None:
        """Start moving the KV of ``tokens`` into node for flight; its "kv-arrived" event follows."""
        node.kv_tokens_in += tokens
        if node.shared is None:
            node.link_free_ns = max(self.now_ns, node.link_free_ns) + node.transfer_ns(tokens)
            self._push(node.link_free_ns, KV_READY, (flight, "kv-arrived"))
            return
        node.shared.start(self.now_ns, flight, tokens * node.cfg.model.kv_bytes_per_token)
        self._wake_link(node)

    def _wake_link(self, node: "Node") -> None:
        assert node.shared is not None
        at = node.shared.next_ns()
        if at is not None:
            self._push(at, LINK, (node, node.shared.version), node.index)

    def _link_event(self, node: "Node", version: int) -> None:
        """The first transfer under way on node's link may be through (stale when one started since)."""
        link = node.shared
        assert link is not None
        if version != link.version:
            return
        for flight in link.finished(self.now_ns):
            self._push(self.now_ns + link.fixed_ns, KV_READY, (flight, "kv-arrived"))
        self._wake_link(node)
