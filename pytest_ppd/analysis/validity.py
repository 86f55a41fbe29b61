"""Proof of a round: every reason it cannot be trusted, or none.

A round is valid only if every request's cached_tokens covers its context and
none of its append, no request failed, every stream ended with [DONE], a
length/stop finish and the expected token counts, the batch is not faster than
the physical floor, and BS x (L + m) fits the server's token pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Invalid:
    """One reason a round cannot be trusted: a kind to count and filter by, and the text records keep.

    Kinds: count, capacity, error, stream, finish, prompt_tokens, completion_tokens, cache, no_token, floor.
    """

    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def capacity_reason(bs: int, L: int, m: int, pool_tokens: int | None) -> Invalid | None:
    """BS x (L + m) must fit the server's token pool, or the contexts cannot all stay cached."""
    if pool_tokens is not None and bs * (L + m) > pool_tokens:
        return Invalid("capacity", f"capacity: BS*(L+m) = {bs * (L + m)} > max_total_num_tokens = {pool_tokens}")
    return None


def floor_reason(latency_ms: float | None, floor_ms: float) -> Invalid | None:
    """No batch can beat the physical floor (roofline.py); one that does measured something else."""
    if latency_ms is None:
        return Invalid("no_token", "no request produced a first token")
    if latency_ms < floor_ms:
        return Invalid("floor", f"below physical floor: batch took {latency_ms:.2f} ms < floor {floor_ms:.2f} ms")
    return None


@dataclass(frozen=True)
class RequestView:
    """What validity needs of one request (decoupled from the client's types)."""

    error: tuple[str, str] | None
    saw_done: bool
    meta_info: dict[str, Any]


def cached_reason(i: int, cached: Any, L: int, page_size: int) -> Invalid | None:
    """cached_tokens must cover the context (to its last whole page) and none of the append."""
    if not isinstance(cached, int):
        return Invalid("cache", f"request {i}: no cached_tokens in meta_info (cache state unproven)")
    lowest = L - (L % page_size)
    if cached > L:
        return Invalid("cache", f"request {i}: cached_tokens={cached} > L={L}: part of the append was served "
                                "from cache")
    if cached < lowest:
        return Invalid("cache", f"request {i}: cached_tokens={cached} < L={L}: the context was not cached "
                                "(recomputed)")
    return None


def round_reasons(requests: Sequence[RequestView], *, bs: int, L: int, m: int, max_new_tokens: int,
                  batch_span_ms: float | None, floor_ms: float, pool_tokens: int | None,
                  page_size: int = 1) -> list[Invalid]:
    """Every reason this round is invalid (empty list: valid)."""
    reasons: list[Invalid | None] = []
    if len(requests) != bs:
        reasons.append(Invalid("count", f"expected {bs} requests, got {len(requests)}"))
    reasons.append(capacity_reason(bs, L, m, pool_tokens))
    for i, req in enumerate(requests):
        if req.error is not None:
            reasons.append(Invalid("error", f"request {i}: {req.error[0]}: {req.error[1]}"))
            continue
        if not req.saw_done:
            reasons.append(Invalid("stream", f"request {i}: stream ended without [DONE]"))
        meta = req.meta_info
        finish = meta.get("finish_reason")
        if not (isinstance(finish, dict) and finish.get("type") in ("length", "stop")):
            reasons.append(Invalid("finish", f"request {i}: finish_reason {finish!r} is not length/stop"))
        if meta.get("prompt_tokens") != L + m:
            reasons.append(Invalid("prompt_tokens",
                                   f"request {i}: prompt_tokens={meta.get('prompt_tokens')} != L+m={L + m}"))
        if meta.get("completion_tokens") != max_new_tokens:
            reasons.append(Invalid("completion_tokens", f"request {i}: completion_tokens="
                                                        f"{meta.get('completion_tokens')} != {max_new_tokens}"))
        reasons.append(cached_reason(i, meta.get("cached_tokens"), L, page_size))
    reasons.append(floor_reason(batch_span_ms, floor_ms))
    return [r for r in reasons if r is not None]
