"""Connections to one http:// server for streamed /generate requests: opened ahead, one request each.

    pool = Pool("http://127.0.0.1:30000")
    await pool.prepare(64)                        # before the start barrier: connect now
    await pool.exchange(body, result, 600.0)      # takes a prepared connection, stamps, writes, reads
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pytest_ppd.client.lean import Exchange

if TYPE_CHECKING:
    from pytest_ppd.client.stream import RequestResult

CONNECT_TIMEOUT_S = 10.0
SPARE_MAX_AGE_S = 3.0  # under uvicorn's 5 s keep-alive: an unused spare is never one the server closed


class Pool:
    """Connections to one http:// server for streamed /generate requests, one request per connection.

    A reused connection can hold a stream's first chunk ~40 ms behind Nagle and delayed ACKs (the
    real sglang-router does not set TCP_NODELAY), so each request gets a connection of its own; the
    ones `prepare` opened ahead are used first. When a burst of requests has ended the pool opens as
    many as the burst had in flight, so the next burst's requests only write their bytes."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self._head = (f"POST {url.path.rstrip('/')}/generate HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      "User-Agent: pytest-ppd\r\nAccept: text/event-stream\r\nCache-Control: no-store\r\n"
                      f"Content-Type: application/json\r\n{auth}").encode()
        self._spares: list[Exchange] = []
        self._inflight = self._peak = 0
        self._refused = False  # a connection of this burst failed: opening more now would only wait

    async def _open(self) -> Exchange:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, conn = await asyncio.get_running_loop().create_connection(Exchange, self.host, self.port)
        return conn

    @staticmethod
    def _usable(conn: Exchange) -> bool:
        closing = conn.transport is None or conn.transport.is_closing()
        return not conn.lost and not closing and time.monotonic() - conn.opened_s < SPARE_MAX_AGE_S

    def _take(self) -> Exchange | None:
        while self._spares:
            conn = self._spares.pop()
            if self._usable(conn):
                return conn
            conn.close()
        return None

    async def prepare(self, n: int) -> None:
        """Open connections until n unused ones wait; failures leave fewer (a request then opens its own)."""
        usable = [c for c in self._spares if self._usable(c)]
        for conn in self._spares:
            if conn not in usable:
                conn.close()
        self._spares = usable
        if n > len(self._spares):
            opened = await asyncio.gather(*(self._open() for _ in range(n - len(self._spares))),
                                          return_exceptions=True)
            self._spares += [c for c in opened if isinstance(c, Exchange)]

    def close(self) -> None:
        for conn in self._spares:
            conn.close()
        self._spares = []

    async def exchange(self, content: bytes, result: RequestResult, timeout_s: float) -> None:
        """Send one /generate body and read its stream into `result` (a failure is recorded there)."""
        self._inflight += 1
        self._peak = max(self._peak, self._inflight)
        conn, ended = None, False
        try:
            conn = self._take()
            if conn is None:
                try:
                    conn = await self._open()
                except TimeoutError:
                    self._refused, result.error = True, ("ConnectTimeout", f"no connection in {CONNECT_TIMEOUT_S:g} s")
                    return
                except OSError as exc:
                    self._refused, result.error = True, ("ConnectError", str(exc) or type(exc).__name__)
                    return
            conn.start(self._head + b"Content-Length: %d\r\n\r\n" % len(content) + content, result, timeout_s)
            await conn.done
            ended = True
        finally:
            if conn is not None:
                conn.close()
                conn.decode_last()
            if result.done_ns is None:
                result.done_ns = time.perf_counter_ns()
            self._inflight -= 1
        if ended and self._inflight == 0:
            peak, refused, self._peak, self._refused = self._peak, self._refused, 0, False
            if not refused:
                await self.prepare(peak)
