"""A lean HTTP/1.1 + SSE reader for one streamed /generate over plain http://, on asyncio's Protocol API.

Response bytes are handled in the event loop's read callback: an SSE event is stamped with the
perf_counter_ns() of the read that completed it, before any parsing, and no coroutine wakes per
chunk. Only what the proof needs is decoded: the last content events (output_ids, meta_info) and any
event that names an ``"error"``; every other event is only checked to be the text of a JSON object.
Failures are recorded on the result under httpx's names (ReadTimeout, RemoteProtocolError, ...), so
records read the same whichever transport measured them. Connections come from connections.Pool::

    _, conn = await loop.create_connection(Exchange, host, port)   # before the timed window
    conn.start(request_bytes, result, timeout_s)                   # stamps sent_ns, one write
    await conn.done; conn.decode_last()
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_ppd.client.stream import RequestResult

_MAX_LINE = 64 * 1024  # a response head or chunk-size line longer than this is not HTTP we can read


class Exchange(asyncio.Protocol):
    """One connection, one request: the response parsed in `data_received` as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.opened_s = time.monotonic()
        self.lost = False
        self.result: RequestResult | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = b""  # the response head until it is complete
        self._headed = False
        self._mode = "eof"  # how the body ends: "chunked", "length" or at "eof"
        self._left = 0  # bytes left: in the current chunk ("chunked") or the body ("length")
        self._skip = 0  # CRLF bytes left after a chunk's data
        self._cbuf = b""  # an incomplete chunk-size line
        self._sbuf = b""  # an incomplete SSE line
        self._data: list[bytes] = []  # the data lines of the event being read
        self._error_body = b""
        self.last = b""  # the last content event, and the last that carried meta_info
        self.last_meta = b""
        self.events: list[bytes] = []  # every content event, checked after the stream (never inside a stamp)
        self._last_io = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = 0.0

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it too; our request must never wait on Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.result is None or self.done.done():
            return
        if isinstance(exc, ConnectionResetError):
            self._finish(("ReadError", str(exc) or "connection reset by peer"))
        elif not self._headed:
            self._finish(("RemoteProtocolError", "Server disconnected without sending a response."))
        elif self._mode == "eof":
            self._body_end()
        else:
            what = "incomplete chunked read" if self._mode == "chunked" else f"{self._left} bytes short"
            self._finish(("RemoteProtocolError",
                          f"peer closed connection without sending complete message body: {what}"))

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        r = self.result
        if r is None or self.done.done():
            if r is None:  # a spare that hears from the server before it asked anything: not ours to use
                self.lost = True
                self.close()
            return
        self._last_io = time.monotonic()
        if r.first_byte_ns is None:
            r.first_byte_ns = now
        if not self._headed:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > _MAX_LINE:
                    self._finish(("RemoteProtocolError", "response head too long"))
                self._head = head
                return
            self._head, self._headed = b"", True
            if not self._parse_head(head[:end].decode("latin-1")):
                return
            data = head[end + 4:]
            if self._mode == "length" and self._left == 0:
                self._body_end()
                return
        if data:
            self._chunked(data, now) if self._mode == "chunked" else self._sized(data, now)

    # -- the request ---------------------------------------------------------
    def start(self, request: bytes, result: RequestResult, timeout_s: float) -> None:
        """Stamp sent_ns and write the request: one write, headers and body together."""
        assert self.transport is not None
        self.result, self._timeout_s = result, timeout_s
        self._last_io = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._watch)
        result.sent_ns = time.perf_counter_ns()
        self.transport.write(request)

    def _watch(self) -> None:
        """A read timeout as httpx has it: no byte for timeout_s (one timer per stream, not per read)."""
        idle = time.monotonic() - self._last_io
        if idle >= self._timeout_s:
            self._finish(("ReadTimeout", f"no response byte for {self._timeout_s:g} s"))
        else:
            self._timer = asyncio.get_running_loop().call_later(self._timeout_s - idle, self._watch)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self._timer is not None:
            self._timer.cancel()

    def _finish(self, error: tuple[str, str] | None = None) -> None:
        r = self.result
        assert r is not None
        if error is not None and r.error is None:
            r.error = error
        if r.done_ns is None:
            r.done_ns = time.perf_counter_ns()
        self.close()
        if not self.done.done():
            self.done.set_result(None)

    # -- HTTP/1.1 ------------------------------------------------------------
    def _parse_head(self, head: str) -> bool:
        r = self.result
        assert r is not None
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            self._finish(("RemoteProtocolError", f"not an HTTP/1.1 status line: {lines[0][:80]!r}"))
            return False
        r.status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("content-encoding", "identity").lower() != "identity":
            self._finish(("RemoteProtocolError", f"unasked Content-Encoding {headers['content-encoding']}"))
            return False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            if not headers["content-length"].isdigit():
                self._finish(("RemoteProtocolError", f"bad Content-Length {headers['content-length'][:20]!r}"))
                return False
            self._mode, self._left = "length", int(headers["content-length"])
        return True

    def _sized(self, data: bytes, now: int) -> None:
        if self._mode == "length":
            data = data[:self._left]
            self._left -= len(data)
        self._content(data, now)
        if self._mode == "length" and self._left == 0 and not self.done.done():
            self._body_end()

    def _chunked(self, data: bytes, now: int) -> None:
        buf = self._cbuf + data if self._cbuf else data
        self._cbuf = b""
        i, n, out = 0, len(buf), []
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                out.append(buf[i:i + take])
                i += take
                self._left -= take
                self._skip = 0 if self._left else 2
            elif self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
            else:
                j = buf.find(b"\r\n", i)
                if j < 0:
                    self._cbuf = buf[i:]
                    if len(self._cbuf) > _MAX_LINE:
                        self._finish(("RemoteProtocolError", "chunk-size line too long"))
                    break
                try:
                    size = int(buf[i:j].split(b";", 1)[0], 16)
                except ValueError:
                    self._finish(("RemoteProtocolError", f"bad chunk size {bytes(buf[i:j][:20])!r}"))
                    return
                i = j + 2
                if size == 0:
                    self._content(b"".join(out), now)
                    if not self.done.done():
                        self._body_end()
                    return
                self._left = size
        if out:
            self._content(b"".join(out), now)

    def _body_end(self) -> None:
        r = self.result
        assert r is not None
        if r.status != 200:
            text = self._error_body.decode(errors="replace")
            self._finish(("HTTPStatus", f"HTTP {r.status}: {text[:300]}"))
        else:
            self._finish(None if r.saw_done or r.error else ("TruncatedStream", "stream ended without data: [DONE]"))

    # -- SSE -----------------------------------------------------------------
    def _content(self, data: bytes, now: int) -> None:
        if self.done.done():
            return
        assert self.result is not None
        if self.result.status != 200:
            self._error_body = (self._error_body + data)[:4096]
            return
        buf = self._sbuf + data if self._sbuf else data
        start = 0
        while True:
            j = buf.find(b"\n", start)
            if j < 0:
                break
            line = buf[start:j]
            start = j + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    event, self._data = b"\n".join(self._data), []
                    self._event(event, now)
                    if self.done.done():
                        return
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            # comments (":...") and the event/id/retry fields carry nothing /generate uses
        self._sbuf = buf[start:]

    def _event(self, data: bytes, now: int) -> None:
        r = self.result
        assert r is not None
        if data == b"[DONE]":
            r.saw_done, r.done_ns = True, now
            self._finish()
            return
        if b'"error"' in data:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            if isinstance(payload, dict) and "error" in payload:
                err = payload["error"]
                r.error = ("StreamError", err.get("message", str(err)) if isinstance(err, dict) else str(err))
                return  # SGLang sends [DONE] after the error event
        if data[:1] != b"{" or data[-1:] != b"}":
            self._finish(("MalformedEvent", data[:200].decode(errors="replace")))
            return
        r.event_ns.append(now)
        self.events.append(data)
        self.last = data
        if b'"meta_info"' in data:
            self.last_meta = data

    def decode_last(self) -> None:
        """meta_info and the output id count from the last content events: what the proof reads."""
        r = self.result
        if r is None or not self.last:
            return
        decoded: dict[bytes, Any] = {}
        for raw in (*self.events, self.last, self.last_meta):  # every event must be JSON, as SGLang writes it
            if raw and raw not in decoded:
                try:
                    decoded[raw] = json.loads(raw)
                except ValueError:
                    if r.error is None:
                        r.error = ("MalformedEvent", raw[:200].decode(errors="replace"))
                    return
        ids = decoded[self.last].get("output_ids")
        if isinstance(ids, list):
            r.n_output_ids = len(ids)
        if self.last_meta and decoded[self.last_meta].get("meta_info"):
            r.meta_info = decoded[self.last_meta]["meta_info"]
