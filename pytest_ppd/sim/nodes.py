"""The parts of a virtual-time deployment: the client's handle of a request, and one engine with its link.

    node = node_for("decode0", resolve(argv), bootstrap_s=0.0)
    node.transfer_ns(4096)       # the KV of 4096 tokens over the link into this engine
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.args import SimConfig, engine_for, profile_for
from pytest_ppd.sim.engine import Engine, SimRequest
from pytest_ppd.sim.links import SharedLink
from pytest_ppd.sim.radix import encode

NS = 1_000_000_000


def to_ns(seconds: float) -> int:
    return int(round(seconds * NS))


@dataclass(eq=False)
class Request:
    """A client's view of one request: exact ids in, token times and SGLang's meta_info out."""

    rid: str
    input_ids: Sequence[int]  # a list, or a read-only view of the key (radix.ids_view)
    max_new_tokens: int
    sent_ns: int
    token_ns: list[int] = field(default_factory=list)  # when each output token reached the client (all of them,
    # or the first and the last: Deployment.token_times)
    output_ids: list[int] = field(default_factory=list)  # the engine's own list (in one instant, ahead of token_ns)
    done_ns: int | None = None
    error: str | None = None
    meta_info: dict[str, Any] = field(default_factory=dict)
    prefill: str | None = None  # engine names the router chose
    engine: str | None = None
    _key: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> bytes:
        """input_ids as a radix-cache key (sim/radix.py), encoded once."""
        if self._key is None:
            self._key = encode(self.input_ids)
        return self._key

    @property
    def done(self) -> bool:
        return self.done_ns is not None

    @property
    def ttft_ns(self) -> int | None:
        """TTFT = first token at the client - request sent."""
        return self.token_ns[0] - self.sent_ns if self.token_ns else None


@dataclass(eq=False)
class Node:
    """One engine of the deployment and the KV link into it (decode side)."""

    name: str
    role: str  # "colocated" | "prefill" | "decode"
    cfg: SimConfig
    engine: Engine
    overhead_ns: int
    bootstrap_ns: int = 0
    busy: bool = False
    index: int = 0  # its place in Deployment.nodes: engines an instant woke are scheduled in this order
    link_free_ns: int = 0
    steps: int = 0
    busy_ns: int = 0  # the sum of its step times
    kv_tokens_in: int = 0  # KV tokens its link carried in
    slow_prompts: dict[int, float] = field(default_factory=dict)
    run: Any = None  # the decode run under way (sim/runs.py), if any
    shared: SharedLink | None = None  # --sim-link-sharing fair: the link's bandwidth split (sim/links.py)

    def transfer_ns(self, tokens: int) -> int:
        return to_ns(self.cfg.link.transfer_s(tokens * self.cfg.model.kv_bytes_per_token)) + self.bootstrap_ns



def refusal(handle: Request, node: Node, check_ids: bool) -> str | None:
    """SGLang's 400s for a request that can never run on node (what the served sim answers); None: it can."""
    n = len(handle.input_ids)
    if n == 0:
        return "ValueError: input_ids is empty"
    if handle.max_new_tokens < 0:
        return "ValueError: max_new_tokens must be at least 0"
    if n + handle.max_new_tokens > node.cfg.context_length:
        return (f"ValueError: the input ({n} tokens) plus max_new_tokens is longer than the model's "
                f"context length ({node.cfg.context_length} tokens)")
    if n >= node.cfg.resolved.max_req_input_len:
        return (f"ValueError: Input length ({n} tokens) exceeds the maximum allowed length "
                f"({node.cfg.resolved.max_req_input_len} tokens)")
    vocab = node.cfg.model.vocab_size
    if check_ids and (min(handle.input_ids) < 0 or max(handle.input_ids) >= vocab):
        bad = next(t for t in handle.input_ids if not 0 <= t < vocab)
        return f"ValueError: token id {bad} is outside the vocabulary (0..{vocab - 1})"
    return None


def node_for(name: str, cfg: SimConfig, bootstrap_s: float) -> Node:
    """An engine as cfg (the sim's argv, resolved) configures it; faults need served engines."""
    args = cfg.args
    profile = profile_for(args)
    engine = engine_for(cfg, profile)
    role = args.disaggregation_mode if args.disaggregation_mode != "null" else "colocated"
    if cfg.faults:
        raise ConfigError("--sim-fault needs served engines: faults are injected into HTTP servers; "
                          "use --ppd-backend=sim for fault studies")
    shared = (SharedLink(cfg.link.bytes_per_s, to_ns(cfg.link.latency_s) + to_ns(bootstrap_s))
              if args.sim_link_sharing == "fair" else None)
    return Node(name, role, cfg, engine, to_ns(profile.request_overhead_s), to_ns(bootstrap_s),
                slow_prompts=dict(cfg.slow_prompts), shared=shared)


@dataclass(eq=False)
class _Flight:
    """One request in the deployment: its client handle and its engine-side requests."""

    handle: Request
    serving: Node  # the engine that streams the answer (colocated or decode)
    prefill: Node | None = None
    sim: SimRequest | None = None  # on the serving engine
    p_sim: SimRequest | None = None  # on the prefill engine
    prefill_done_ns: int | None = None
    prefill_result: SimRequest | None = None
    decode_ready_ns: int | None = None
    stretch_ns: int | None = None
    added_ns: int = 0  # when the serving engine got it (after its overhead, or after the KV arrived)


def keep_ends(times: list[int], n: int, first: int, last: int) -> None:
    """n more tokens reached the client, the first of them at ``first`` and the last at ``last``: ``times``
    keeps only the first token's time and the latest one's (Deployment.token_times = False)."""
    if not times:
        times.append(first)
        n -= 1
    if n > 0:
        if len(times) == 1:
            times.append(last)
        else:
            times[-1] = last


def meta_info(handle: Request, req: SimRequest, at_ns: int, added_ns: int) -> dict[str, Any]:
    """SGLang's meta_info with --enable-metrics (times in seconds, as SGLang reports them)."""
    return {
        "id": handle.rid, "finish_reason": req.finish_reason, "prompt_tokens": req.prompt_len,
        "completion_tokens": len(req.output_ids), "cached_tokens": req.cached_tokens,
        "e2e_latency": (at_ns - handle.sent_ns) / NS,
        "first_token_latency": (handle.token_ns[0] - handle.sent_ns) / NS,
        "queue_time": max((req.forward_entry_s or 0.0) - added_ns / NS, 0.0),
    }
