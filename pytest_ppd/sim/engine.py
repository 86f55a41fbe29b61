"""The simulated engine core: admission, chunked prefill, continuous batching.

It knows nothing of clocks or HTTP. A driver asks ``schedule(now)`` for the
next batch, waits ``batch.duration_s`` on its clock (wall or virtual), then
calls ``complete(batch, now)`` and delivers the returned events. Step times
come from an injected cost model; ordering is deterministic.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Callable, Literal, Sequence

from pytest_ppd.sim.costmodel import CostModel, Extend
from pytest_ppd.sim.radix import Match, RadixCache, _Node, encode

Mode = Literal["null", "prefill", "decode"]


class SimRequest:
    """One generate request as the engine tracks it; times are on the driver's clock (s). A plain class with its
    own ``__init__`` (one per request and engine; compiled, PPD_COMPILE=1, a native constructor)."""

    def __init__(self, rid: str, input_ids: Sequence[int], max_new_tokens: int, arrival_s: float,
                 preset_first_token: int | None = None, preset_cached_tokens: int = 0, host_s: float = 0.0,
                 cached_tokens: int = 0, computed: int = 0, output_ids: list[int] | None = None,
                 _key: bytes | None = None) -> None:
        self.rid = rid
        self.input_ids = input_ids  # a list, or a read-only view of the key (radix.ids_view)
        self.max_new_tokens = max_new_tokens
        self.arrival_s = arrival_s
        self.preset_first_token = preset_first_token  # decode side of P/D: computed by the prefill engine
        self.preset_cached_tokens = preset_cached_tokens
        self.host_s = host_s  # wall time the HTTP server spent receiving and parsing it (0 in virtual runs)
        self.cached_tokens = cached_tokens
        self.computed = computed
        self.output_ids: list[int] = [] if output_ids is None else output_ids
        self.owned = 0  # pool tokens held outside the radix tree
        self.budget = 0  # pool tokens it may come to own (set at admission)
        self.node: _Node | None = None  # its locked radix node, whose path spells its first node_len prompt tokens
        self.node_len = 0
        self.forward_entry_s: float | None = None
        self.first_token_s: float | None = None
        self.prefill_finished_s: float | None = None
        self.finished_s: float | None = None
        self.finish_reason: dict | None = None
        self.aborted = False
        self._key = _key
        # Read at every step: attributes, not properties. Its output ids are (token_base + 2654435761 i) % vocab,
        # i = 1, 2, ... (a deterministic stand-in for sampling).
        self.prompt_len = len(input_ids)
        self.token_base = (input_ids[-1] if input_ids else 0) * 1103515245 + 12345

    def __repr__(self) -> str:
        return (f"SimRequest({self.rid!r}, {self.prompt_len} prompt tokens, {len(self.output_ids)}/"
                f"{self.max_new_tokens} out, computed={self.computed}, cached={self.cached_tokens})")

    @property
    def key(self) -> bytes:
        """The prompt as a radix-cache key, encoded once."""
        if self._key is None:
            self._key = encode(self.input_ids)
        return self._key

    @property
    def remaining_reserve(self) -> int:
        """Tokens admitted for but not yet allocated: the rest of its prompt chunks and its outputs."""
        return max(self.budget - self.owned, 0)


class Batch:
    """One step's batch. Here and in Event, plain classes with their own ``__init__``: made at every step, and
    compiled (PPD_COMPILE=1) to native constructors."""

    __slots__ = ("kind", "items", "step_time", "contexts", "_duration_s")

    def __init__(self, kind: Literal["extend", "decode"], items: tuple[tuple[SimRequest, int], ...],
                 step_time: Callable[[], float], contexts: list[int] | None = None) -> None:
        self.kind = kind
        self.items = items  # (request, tokens computed for it)
        self.step_time = step_time  # its cost model's, asked once
        self.contexts = contexts  # decode: the contexts of its requests past their first token (all, when as many
        # as items)
        self._duration_s: float | None = None

    @property
    def duration_s(self) -> float:
        """The step's time (a virtual deployment that times a decode run as a whole never asks)."""
        if self._duration_s is None:
            self._duration_s = self.step_time()
        return self._duration_s

    def __repr__(self) -> str:
        return f"Batch({self.kind!r}, {len(self.items)} requests)"


class Event:
    """What a completed batch means for one request (a value: never changed)."""

    __slots__ = ("req", "new_ids", "finished")

    def __init__(self, req: SimRequest, new_ids: tuple[int, ...], finished: bool) -> None:
        self.req, self.new_ids, self.finished = req, new_ids, finished

    def __repr__(self) -> str:
        return f"Event({self.req.rid!r}, {self.new_ids}, finished={self.finished})"


class Engine:
    """One engine instance (one GPU, or one TP group)."""

    def __init__(self, cost: CostModel, pool_tokens: int, *, mode: Mode = "null",
                 chunked_prefill_size: int = 8192, max_running_requests: int = 1024,
                 page_size: int = 1, disable_radix_cache: bool = False, max_prefill_tokens: int = 1 << 62,
                 num_reserved_decode_tokens: int = 0, cuda_graph_max_bs: int | None = None) -> None:
        """cuda_graph_max_bs: decode batches above it run without CUDA graphs (None: no limit);
        num_reserved_decode_tokens: tokens a decode-side request keeps reserved for its outputs (SGLang's
        P/D decode admission); max_prefill_tokens: new tokens one extend batch may take at most."""
        if pool_tokens <= 0:
            raise ValueError(f"token pool must be > 0 tokens, got {pool_tokens}")
        self.cost, self.pool_tokens, self.mode = cost, pool_tokens, mode
        chunk = chunked_prefill_size if chunked_prefill_size > 0 else 1 << 62
        self.chunk = min(chunk, max_prefill_tokens)
        self.reserve_decode = num_reserved_decode_tokens
        self.graph_max_bs = cuda_graph_max_bs
        self.max_running = max_running_requests
        self.cache = RadixCache(page_size=page_size, disabled=disable_radix_cache)
        self.waiting: deque[SimRequest] = deque()
        self.prefilled: deque[SimRequest] = deque()  # decode side: KV arrived, awaiting pool space
        self.running: list[SimRequest] = []
        self.chunking: SimRequest | None = None
        self.vocab = cost.model.vocab_size

    # -- pool accounting -------------------------------------------------
    @property
    def owned_tokens(self) -> int:
        return sum(r.owned for r in self.running)

    @property
    def used_tokens(self) -> int:
        return self.cache.total_size + self.owned_tokens

    def _free_after_reserve(self) -> int:
        # used + reserved, per request: owned + max(budget - owned, 0) = max(budget, owned), in one pass
        return self.pool_tokens - self.cache.total_size - sum(max(r.budget, r.owned) for r in self.running)

    def _make_room(self, need: int) -> bool:
        free = self._free_after_reserve()
        if need > free:
            free += self.cache.evict(need - free)  # what it frees is the cache's only
        return free >= need

    # -- intake ----------------------------------------------------------
    def add(self, req: SimRequest) -> None:
        """Queue a request; the caller has validated it against the pool and context."""
        if req.preset_first_token is not None:
            self.prefilled.append(req)
        else:
            self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """Drop a request wherever it is, releasing what it holds (client went away)."""
        req.aborted = True
        for queue in (self.waiting, self.prefilled):
            if req in queue:
                queue.remove(req)
        if req in self.running:
            self._release(req, cache_it=False)
        if self.chunking is req:
            self.chunking = None

    def flush(self) -> bool:
        """Empty the prefix cache; refused (False) while requests are queued or running."""
        if self.waiting or self.running or self.prefilled:
            return False
        return self.cache.flush()

    def idle(self) -> bool:
        return not (self.waiting or self.running or self.prefilled)

    # -- scheduling --------------------------------------------------------
    def schedule(self, now: float) -> Batch | None:
        """The next batch: prefill has priority over decode (SGLang's default, no mixed chunks)."""
        batch = self._schedule_extend(now)
        if batch is not None:
            return batch
        return self._schedule_decode(now)

    def _schedule_extend(self, now: float) -> Batch | None:
        if self.chunking is None and not self.waiting:
            return None
        budget = self.chunk
        items: list[tuple[SimRequest, int]] = []
        chunks: list[Extend] = []
        if self.chunking is not None:
            req = self.chunking
            n = min(req.prompt_len - req.computed, budget)
            items.append((req, n))
            chunks.append(Extend(n, req.computed, logits=req.computed + n == req.prompt_len))
            req.owned += n
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            req = self.waiting[0]
            match = self.cache.match_prefix(req.key, req.prompt_len - 1)
            self.cache.lock(match.node)
            need = req.prompt_len - match.length + req.max_new_tokens
            if not self._make_room(need):
                self.cache.unlock(match.node)
                break  # head-of-line waits for memory, like SGLang's FCFS
            self.waiting.popleft()
            req.node, req.node_len = match.node, match.length
            req.cached_tokens, req.computed = match.length, match.length
            req.budget = need
            req.forward_entry_s = now
            self.running.append(req)
            n = min(req.prompt_len - req.computed, budget)
            items.append((req, n))
            chunks.append(Extend(n, req.computed, logits=req.computed + n == req.prompt_len,
                                 admitted_prompt=req.prompt_len, host_s=req.host_s))
            req.owned += n  # allocated now, so the next admission sees it
            budget -= n
        if not items:
            return None
        self.chunking = next((r for r, n in items if r.computed + n < r.prompt_len), None)
        return Batch("extend", tuple(items), partial(self.cost.extend_time, chunks))

    def _schedule_decode(self, now: float) -> Batch | None:
        while self.prefilled and len(self.running) < self.max_running:
            req = self.prefilled[0]
            budget = req.prompt_len + max(req.max_new_tokens, self.reserve_decode)
            if not self._make_room(budget):
                break
            self.prefilled.popleft()
            req.computed = req.prompt_len
            req.owned = req.prompt_len
            req.budget = budget
            req.cached_tokens = req.preset_cached_tokens
            req.forward_entry_s = now
            self.running.append(req)
        items = tuple([(r, 1) for r in self.running if r.computed == r.prompt_len])
        if not items:
            return None
        contexts = []
        for req, _ in items:
            if req.output_ids:  # the step writes its new token's KV in a slot of its own
                contexts.append(req.prompt_len + len(req.output_ids))
                req.owned += 1
        eager = self.graph_max_bs is not None and len(items) > self.graph_max_bs
        return Batch("decode", items, partial(self.cost.decode_time, contexts, eager), contexts=contexts)

    # -- completion --------------------------------------------------------
    def _next_token(self, req: SimRequest) -> int:
        return (req.token_base + 2654435761 * (len(req.output_ids) + 1)) % self.vocab

    def complete(self, batch: Batch, now: float) -> list[Event]:
        """Apply a finished batch; returns one event per request that produced tokens."""
        events: list[Event] = []
        for req, n in batch.items:
            if req.aborted:
                continue
            if batch.kind == "extend":
                req.computed += n
                self._cache_unfinished(req)
                if req.computed < req.prompt_len:
                    continue
                req.prefill_finished_s = now
            if req.preset_first_token is not None and not req.output_ids:
                token = req.preset_first_token
                req.prefill_finished_s = req.prefill_finished_s or now
            else:
                token = self._next_token(req)
            req.output_ids.append(token)
            if req.first_token_s is None:
                req.first_token_s = now
            done = len(req.output_ids) >= req.max_new_tokens or self.mode == "prefill"
            if done:
                self.finish(req, now)
            events.append(Event(req, (token,), done))
        return events

    def finish(self, req: SimRequest, now: float) -> None:
        """req has all its tokens: it leaves the batch, its prompt and answer enter the cache."""
        req.finished_s = now
        req.finish_reason = {"type": "length", "length": req.max_new_tokens}
        self._release(req, cache_it=True)

    def _cache_unfinished(self, req: SimRequest) -> None:
        """SGLang's cache_unfinished_req: each prefilled chunk enters the radix tree at once (locked while the
        request runs), so a request admitted meanwhile with the same prefix reuses it."""
        if self.mode == "decode" or self.cache.disabled:
            return
        start = Match(req.node_len, req.node) if req.node is not None else None  # walk on from its node
        moved, match = self.cache.insert_and_match(req.key, start=start, tokens=req.computed)  # the tree's
        req.owned -= moved
        req.budget -= moved  # what it still needs is unchanged
        self.cache.lock(match.node)
        if req.node is not None:
            self.cache.unlock(req.node)
        req.node, req.node_len = match.node, match.length

    def _release(self, req: SimRequest, cache_it: bool) -> None:
        if cache_it and self.mode != "decode":
            # The last output token has no KV yet; SGLang caches input + output[:-1].
            start = Match(req.node_len, req.node) if req.node is not None else None
            self.cache.insert(req.key + encode(req.output_ids[:-1]), start)
        if req.node is not None:
            self.cache.unlock(req.node)
            req.node = None
        req.owned = 0
        if req in self.running:
            self.running.remove(req)
        if self.chunking is req:
            self.chunking = None
