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
class RequestView:
    """What validity needs of one request (decoupled from the client's types)."""

    error: tuple[str, str] | None
    saw_done: bool
    meta_info: dict[str, Any]


def cached_reason(i: int, cached: Any, L: int, page_size: int) -> str | None:
    """cached_tokens must cover the context (to its last whole page) and none of the append."""
    if not isinstance(cached, int):
        return f"request {i}: no cached_tokens in meta_info (cache state unproven)"
    lowest = L - (L % page_size)
    if cached > L:
        return f"request {i}: cached_tokens={cached} > L={L}: part of the append was served from cache"
    if cached < lowest:
        return f"request {i}: cached_tokens={cached} < L={L}: the context was not cached (recomputed)"
    return None


def round_reasons(requests: Sequence[RequestView], *, bs: int, L: int, m: int, max_new_tokens: int,
                  batch_span_ms: float | None, floor_ms: float, pool_tokens: int | None,
                  page_size: int = 1) -> list[str]:
    """Every reason this round is invalid (empty list: valid)."""
    reasons: list[str] = []
    if len(requests) != bs:
        reasons.append(f"expected {bs} requests, got {len(requests)}")
    if pool_tokens is not None and bs * (L + m) > pool_tokens:
        reasons.append(f"capacity: BS*(L+m) = {bs * (L + m)} > max_total_num_tokens = {pool_tokens}")
    for i, req in enumerate(requests):
        if req.error is not None:
            reasons.append(f"request {i}: {req.error[0]}: {req.error[1]}")
            continue
        if not req.saw_done:
            reasons.append(f"request {i}: stream ended without [DONE]")
        meta = req.meta_info
        finish = meta.get("finish_reason")
        if not (isinstance(finish, dict) and finish.get("type") in ("length", "stop")):
            reasons.append(f"request {i}: finish_reason {finish!r} is not length/stop")
        if meta.get("prompt_tokens") != L + m:
            reasons.append(f"request {i}: prompt_tokens={meta.get('prompt_tokens')} != L+m={L + m}")
        if meta.get("completion_tokens") != max_new_tokens:
            reasons.append(f"request {i}: completion_tokens={meta.get('completion_tokens')} != {max_new_tokens}")
        reason = cached_reason(i, meta.get("cached_tokens"), L, page_size)
        if reason:
            reasons.append(reason)
    if batch_span_ms is None:
        reasons.append("no request produced a first token")
    elif batch_span_ms < floor_ms:
        reasons.append(f"below physical floor: batch took {batch_span_ms:.2f} ms < floor {floor_ms:.2f} ms")
    return reasons
