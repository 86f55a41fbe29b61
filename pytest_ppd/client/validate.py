"""`ppd validate --url URL`: is this deployment fit to measure? One line per check.

Seed 002's validate_setup, made exact: health, model, a streamed request of
exact token ids, and the cache proof the measurements depend on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from pytest_ppd.client.stream import StreamClient

PROOF_CONTEXT = 512


@dataclass(frozen=True)
class Check:
    ok: bool
    name: str
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def _health(client: StreamClient, url: str) -> Check:
    """A router answers /readiness (503 until its workers are healthy); an engine answers /health."""
    started = time.perf_counter()
    for path in ("/readiness", "/health"):
        try:
            resp = await client._client.get(path)
        except httpx.HTTPError as exc:
            return Check(False, "health", f"{url} unreachable ({type(exc).__name__}); is the server up?")
        if resp.status_code == 404:
            continue
        if resp.status_code == 200:
            return Check(True, "health", f"GET {path} -> 200 in {(time.perf_counter() - started) * 1e3:.1f} ms")
        return Check(False, "health", f"GET {path} -> HTTP {resp.status_code}: {resp.text[:120]}")
    return Check(False, "health", "neither /readiness nor /health exists; is this an SGLang server or router?")


async def _model(client: StreamClient) -> tuple[Check, int]:
    for path in ("/get_model_info", "/model_info"):
        try:
            resp = await client._client.get(path)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            info = resp.json()
            return Check(True, "model", f"{info.get('model_path')} (GET {path})"), 0
        if resp.status_code in (401, 403):
            return Check(False, "model", f"HTTP {resp.status_code}: set PPD_API_KEY to the server's key"), 0
    return Check(False, "model", "neither /get_model_info nor /model_info answered 200"), 0


async def _stream(client: StreamClient) -> Check:
    result = await client.generate([1001, 1002, 1003, 1004], 4)
    if result.error:
        return Check(False, "stream", f"{result.error[0]}: {result.error[1]}")
    if result.ttft_ns is None:
        return Check(False, "stream", "the stream ended without a content event: no token to time")
    ttft_ms = result.ttft_ns / 1e6
    return Check(True, "stream", f"4 tokens streamed, TTFT {ttft_ms:.1f} ms, "
                                 f"{len(result.event_ns)} events, ended with [DONE]")


async def _cache(client: StreamClient) -> Check:
    ctx = [2000 + (i * 7919) % 20000 for i in range(PROOF_CONTEXT)]
    stamp = int(time.time() * 1000) % 50000
    first = await client.generate(ctx + [30000 + stamp % 1000], 1)
    second = await client.generate(ctx + [31000 + stamp % 1000, 31001], 1)
    for r in (first, second):
        if r.error:
            return Check(False, "cache", f"{r.error[0]}: {r.error[1]}")
    cached = second.meta_info.get("cached_tokens")
    if cached is None:
        return Check(False, "cache", "meta_info has no cached_tokens: cache state cannot be proven")
    if cached < PROOF_CONTEXT - 64 or cached > PROOF_CONTEXT:
        return Check(False, "cache", f"shared {PROOF_CONTEXT}-token prefix reported cached_tokens={cached}; "
                                     "is the radix cache disabled?")
    return Check(True, "cache", f"shared {PROOF_CONTEXT}-token prefix reported cached_tokens={cached}")


async def validate(url: str, api_key: str | None = None) -> list[Check]:
    async with StreamClient(url, api_key=api_key, timeout_s=60) as client:
        checks = [await _health(client, url)]
        if not checks[0].ok:
            return checks
        checks.append((await _model(client))[0])
        checks.append(await _stream(client))
        checks.append(await _cache(client))
    return checks


def run_validate(url: str, api_key: str | None = None) -> list[Check]:
    return asyncio.run(validate(url, api_key))
