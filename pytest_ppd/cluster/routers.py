"""Router policies (which engine of a group) and conditional-disaggregation rules (LOCAL or REMOTE).

    policy = POLICIES["cache"]()                 # sglang-router's cache_aware, with its defaults
    node = policy.pick(dep.colocated, ids, session="s3", loads=dep.loads)
    parse_rule("dynamo-v0").local(uncached=1800, prefill_queue=0)   # False: send it to a prefill engine

Policies see only what a router sees: the ids it sent where (its own radix tree per engine, which does
not know about the engines' evictions), its count of requests in flight per engine, and session ids.
Rules see what the decode side knows when the request arrives: how many prompt tokens its own cache lacks
(``uncached``) and how many requests wait in the prefill engines' queues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.nodes import Node
from pytest_ppd.sim.radix import TOKEN_BYTES, RadixCache, encode
from pytest_ppd.sim.native import picklable

Loads = Callable[[Sequence[Node]], list[int]]  # a group's loads, in its order (one call per pick, not per engine)


class Policy(Protocol):
    """Picks one engine of a group for a request."""

    name: str

    def pick(self, nodes: Sequence[Node], ids: Sequence[int], session: str | None, loads: Loads) -> Node: ...


def _least_loaded(nodes: Sequence[Node], loads: Loads) -> Node:
    each = loads(nodes)
    return nodes[each.index(min(each))]  # ties: the first, so the choice is deterministic


class RoundRobin:
    """Each engine in turn (sglang-router's round_robin)."""

    name = "rr"

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, nodes: Sequence[Node], ids: Sequence[int], session: str | None, loads: Loads) -> Node:
        self.turn += 1
        return nodes[(self.turn - 1) % len(nodes)]


class Sticky:
    """Session affinity: a session's first turn goes to the least-loaded engine, its later turns follow it;
    requests without a session go to the least-loaded engine."""

    name = "sticky"

    def __init__(self) -> None:
        self.home: dict[str, Node] = {}

    def pick(self, nodes: Sequence[Node], ids: Sequence[int], session: str | None, loads: Loads) -> Node:
        if session is not None and session in self.home and self.home[session] in nodes:
            return self.home[session]
        node = _least_loaded(nodes, loads)
        if session is not None:
            self.home[session] = node
        return node


class CacheAware:
    """sglang-router's cache_aware policy (sglang-router 0.3.2 defaults): when loads are imbalanced
    (max - min > ``balance_abs`` and max > ``balance_rel`` x min) the least-loaded engine; else the
    engine whose tree matches the longest prefix if it matches more than ``cache_threshold`` of the prompt,
    else the engine with the smallest tree. Trees hold the prompts the router sent (never the answers, which
    it does not see), capped at the engine's pool."""

    name = "cache"

    def __init__(self, cache_threshold: float = 0.3, balance_abs: int = 64, balance_rel: float = 1.5) -> None:
        self.cache_threshold, self.balance_abs, self.balance_rel = cache_threshold, balance_abs, balance_rel
        self.trees: dict[Node, RadixCache] = {}  # engine -> the prompts this router sent it

    def pick(self, nodes: Sequence[Node], ids: Sequence[int] | bytes, session: str | None, loads: Loads) -> Node:
        key = encode(ids)  # once, for every tree
        each = loads(nodes)
        known = self.trees
        trees = [known[n] if n in known else known.setdefault(n, RadixCache()) for n in nodes]
        low, high = min(each), max(each)
        start = None
        if high - low > self.balance_abs and high > self.balance_rel * low:
            chosen = each.index(low)  # the least loaded; ties: the first
        else:
            head = key[:TOKEN_BYTES]  # a tree whose first page differs matches nothing: skip the walk (page size 1)
            # the longest match; ties: the least loaded, then the first
            best, matches = (0, 0, 0), {}
            for i, tree in enumerate(trees):
                if head in tree.root.children:
                    matches[i] = m = tree.match_prefix(key)
                    best = max(best, (m.length, -each[i], -i))
            if best[0] > self.cache_threshold * (len(key) // TOKEN_BYTES):
                chosen = -best[2]
            else:
                chosen = min(range(len(nodes)), key=lambda i: (trees[i].total_size, each[i]))
            start = matches.get(chosen)
        node, tree = nodes[chosen], trees[chosen]
        tree.insert(key, start)  # from where its walk ended (the tree is unchanged since)
        if tree.total_size > node.cfg.pool_tokens:
            tree.evict(tree.total_size - node.cfg.pool_tokens)
        return node


POLICIES: dict[str, Callable[[], Policy]] = {"rr": RoundRobin, "cache": CacheAware, "sticky": Sticky}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"'{name}' is not a router policy; valid: {', '.join(POLICIES)}")
    return POLICIES[name]()


@dataclass(frozen=True)
class Rule:
    """Conditional disaggregation, decided per request where its decode engine is chosen.

    - ``dynamo-v0`` (Dynamo 0.1's disagg router): REMOTE iff uncached > threshold (1000) and fewer than
      ``max_queue`` (2) requests wait for a prefill engine;
    - ``vllm-ppd``: LOCAL iff the append (uncached tokens) < threshold (512);
    - ``llmd`` (llm-d's P/D profile handler): REMOTE iff non-cached tokens >= threshold (our default
      1024; llm-d makes it a parameter). In this model it is vllm-ppd's rule with another threshold.
    """

    name: str
    threshold: int
    max_queue: int = 2

    def local(self, uncached: int, prefill_queue: int) -> bool:
        """True: prefill on the decode engine (LOCAL); False: on a prefill engine (REMOTE)."""
        if self.name == "dynamo-v0":
            return not (uncached > self.threshold and prefill_queue < self.max_queue)
        return uncached < self.threshold


picklable(Rule)

RULES: dict[str, int] = {"dynamo-v0": 1000, "vllm-ppd": 512, "llmd": 1024}  # name -> default threshold


def parse_rule(text: str) -> Rule:
    """``NAME`` or ``NAME:THRESHOLD`` (tokens), e.g. ``vllm-ppd``, ``llmd:2048``."""
    name, _, value = text.partition(":")
    if name not in RULES:
        raise ConfigError(f"'{name}' is not a conditional-disaggregation rule; valid: {', '.join(RULES)} "
                          "(optionally NAME:THRESHOLD, e.g. llmd:2048)")
    try:
        threshold = int(value) if value else RULES[name]
    except ValueError:
        raise ConfigError(f"rule '{text}': THRESHOLD must be a whole number of tokens, e.g. {name}:1024") from None
    if threshold < 0:
        raise ConfigError(f"rule '{text}': THRESHOLD must be >= 0 tokens")
    return Rule(name, threshold)
