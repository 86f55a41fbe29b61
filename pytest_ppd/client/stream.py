"""The streaming client: stamps perf_counter_ns() for send, first byte and every SSE event.

It measures and keeps; metrics are derived elsewhere. A failed request is data
(``error`` is set), never an exception::

    async with StreamClient(url) as client:
        await client.prepare(64)          # optional: 64 connections open before the start barrier
        result = await client.generate(ids, max_new_tokens=2)
        result.ttft_ns

Over http:// the streams go through the lean reader (lean.py, connections.py): a request on a
connection opened ahead only writes its bytes, and each event is stamped in the read callback.
https:// goes through httpx. Either way sent_ns is stamped right before the request is written,
after the connection is up, so no connection setup is inside a TTFT.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import aconnect_sse

from pytest_ppd.client.connections import Pool


@dataclass
class RequestResult:
    """What one streamed /generate did, with monotonic ns stamps."""

    sent_ns: int  # right before the request's bytes were written (until then: when send() was called)
    first_byte_ns: int | None = None
    event_ns: list[int] = field(default_factory=list)  # content events only
    done_ns: int | None = None
    status: int | None = None
    saw_done: bool = False
    meta_info: dict[str, Any] = field(default_factory=dict)
    n_output_ids: int = 0
    error: tuple[str, str] | None = None  # (type, message)

    @property
    def ttft_ns(self) -> int | None:
        """TTFT = first content event - request sent (its bytes written on an open connection)."""
        return self.event_ns[0] - self.sent_ns if self.event_ns else None

    @property
    def e2e_ns(self) -> int | None:
        return self.done_ns - self.sent_ns if self.done_ns is not None else None

    @property
    def itl_ns(self) -> list[int]:
        """Inter-token latencies: gaps between consecutive content events."""
        return [b - a for a, b in zip(self.event_ns, self.event_ns[1:])]


def build_body(input_ids: list[int] | str, max_new_tokens: int, *, rid: str | None = None,
               extra: dict[str, Any] | None = None) -> bytes:
    """A streaming /generate body of exact token ids (a list, or already a JSON array), greedy, ignoring EOS."""
    body: dict[str, Any] = {
        "input_ids": None, "stream": True,
        "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True, "temperature": 0.0},
        **(extra or {}),
    }
    if rid:
        body["rid"] = rid
    ids = input_ids if isinstance(input_ids, str) else json.dumps(input_ids, separators=(",", ":"))
    return json.dumps(body, separators=(",", ":")).replace('"input_ids":null', f'"input_ids":{ids}', 1).encode()


class StreamClient:
    """Async client; one TCP connection per stream (no keep-alive reuse), opened ahead when it can be.

    The real sglang-router does not set TCP_NODELAY: a reused connection can
    hold a stream's first chunk ~40 ms behind Nagle and delayed ACKs. Over
    http://, when a burst of streams has ended the client opens as many fresh
    connections as it had in flight, so the next burst (the runner's next round)
    finds them open; `prepare(n)` does the same on demand.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0, *,
                 lean: bool = True) -> None:
        """lean=False: streams through httpx even over http:// (the reference the lean reader is tested against)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url, headers=headers, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=None),
        )
        self._timeout_s = timeout_s
        self._pool = Pool(base_url, api_key) if lean and urlsplit(base_url).scheme == "http" else None

    async def __aenter__(self) -> "StreamClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
        await self._client.aclose()

    async def prepare(self, n: int) -> None:
        """Open n connections now (before a start barrier): each of the next n sends then only writes."""
        if self._pool is not None:
            await self._pool.prepare(n)

    async def post_json(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self._client.post(path, json=body)

    async def get_json(self, path: str) -> Any:
        resp = await self._client.get(path)
        resp.raise_for_status()
        return resp.json()

    async def generate(self, input_ids: list[int], max_new_tokens: int, *, rid: str | None = None,
                       extra: dict[str, Any] | None = None) -> RequestResult:
        return await self.send(build_body(input_ids, max_new_tokens, rid=rid, extra=extra))

    async def send(self, content: bytes, result: RequestResult | None = None) -> RequestResult:
        """Stream one pre-encoded /generate body (encode before the start barrier, not after).

        Pass `result` to keep the stamps of a stream you may cancel."""
        if result is None:
            result = RequestResult(sent_ns=time.perf_counter_ns())
        else:
            result.sent_ns = time.perf_counter_ns()
        if self._pool is not None:
            await self._pool.exchange(content, result, self._timeout_s)
            return result
        return await self._send_httpx(content, result)

    async def _send_httpx(self, content: bytes, result: RequestResult) -> RequestResult:
        async def trace(name: str, info: object) -> None:
            if name == "http11.send_request_headers.started":  # the connection (TLS too) is up
                result.sent_ns = time.perf_counter_ns()

        try:
            async with aconnect_sse(self._client, "POST", "/generate", content=content,
                                    headers={"Content-Type": "application/json"},
                                    extensions={"trace": trace}) as source:
                resp = source.response
                result.first_byte_ns = time.perf_counter_ns()
                result.status = resp.status_code
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    result.error = ("HTTPStatus", f"HTTP {resp.status_code}: {text[:300]}")
                    return result
                async for event in source.aiter_sse():
                    now = time.perf_counter_ns()
                    if event.data == "[DONE]":
                        result.saw_done = True
                        break
                    try:
                        payload = json.loads(event.data)
                    except json.JSONDecodeError:
                        result.error = ("MalformedEvent", event.data[:200])
                        break
                    if "error" in payload:
                        err = payload["error"]
                        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                        result.error = ("StreamError", msg)
                        continue  # SGLang sends [DONE] after the error event
                    result.event_ns.append(now)
                    result.meta_info = payload.get("meta_info") or result.meta_info
                    ids = payload.get("output_ids")
                    if isinstance(ids, list):
                        result.n_output_ids = len(ids)
        except httpx.HTTPError as exc:
            result.error = (type(exc).__name__, str(exc)[:300] or type(exc).__name__)
        finally:
            result.done_ns = time.perf_counter_ns()
        if result.error is None and not result.saw_done:
            result.error = ("TruncatedStream", "stream ended without data: [DONE]")
        return result
