"""The streaming client: the lean reader against the httpx reference on the served sim, every failure as data,
HTTP/1.1 framing and SSE parsing whatever the reads' boundaries, connections opened ahead."""

import asyncio
import json
import re
import time

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from pytest_ppd.client.lean import Exchange
from pytest_ppd.client.stream import RequestResult, StreamClient, build_body
from pytest_ppd.servers.topology import TopologyConfig, start_topology

TRANSPORTS = pytest.mark.parametrize("lean", [True, False], ids=["lean", "httpx"])
SCRIPTS = {  # what the server writes for each request's rid
    "ok": [{"output_ids": [5], "meta_info": {"cached_tokens": 3}}, {"output_ids": [5, 6]}, "[DONE]"],
    "error": [{"error": {"message": "scheduler aborted"}}, "[DONE]"],
    "truncated": [{"output_ids": [5]}],
    "malformed": ['{"output_ids": [1, 2'],
    "malformed-middle": [{"output_ids": [5]}, '{"output_ids": [5, }', {"output_ids": [5, 6, 7]}, "[DONE]"],
}


async def _generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("rid") == "http400":
        return web.json_response({"error": "bad"}, status=400)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for item in SCRIPTS[body["rid"]]:
        data = item if isinstance(item, str) else json.dumps(item)
        await resp.write(f"data: {data}\n\n".encode())
        await asyncio.sleep(0.01)
    return resp


async def _run(rids, lean):
    app = web.Application()
    app.router.add_post("/generate", _generate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with StreamClient(f"http://127.0.0.1:{port}", lean=lean) as client:
            return {rid: await client.send(build_body([1, 2, 3], 2, rid=rid)) for rid in rids}
    finally:
        await runner.cleanup()


@TRANSPORTS
def test_every_outcome_of_a_stream_is_recorded_as_data(lean):
    out = asyncio.run(_run(["ok", "error", "truncated", "malformed", "malformed-middle", "http400"], lean))
    ok = out["ok"]
    assert ok.error is None and ok.saw_done and ok.n_output_ids == 2 and ok.meta_info == {"cached_tokens": 3}
    assert len(ok.event_ns) == 2 and ok.sent_ns < ok.first_byte_ns <= ok.event_ns[0] < ok.event_ns[1] <= ok.done_ns
    assert ok.ttft_ns == ok.event_ns[0] - ok.sent_ns and ok.itl_ns == [ok.event_ns[1] - ok.event_ns[0]]
    assert out["error"].error == ("StreamError", "scheduler aborted") and out["error"].saw_done
    assert out["truncated"].error[0] == "TruncatedStream" and not out["truncated"].saw_done
    assert out["malformed"].error[0] == "MalformedEvent"
    assert out["malformed-middle"].error[0] == "MalformedEvent"  # a braced event that is not JSON, mid-stream
    assert out["http400"].error[0] == "HTTPStatus" and out["http400"].status == 400


def test_bodies_carry_exact_ids_greedy_and_ignoring_eos():
    body = json.loads(build_body([7, 8], 3, rid="x"))
    assert body["input_ids"] == [7, 8] and body["stream"] is True and body["rid"] == "x"
    assert body["sampling_params"] == {"max_new_tokens": 3, "ignore_eos": True, "temperature": 0.0}
    assert json.loads(build_body("[1,2]", 1))["input_ids"] == [1, 2]  # pre-encoded ids pass through


# -- the served sim: the lean reader gives what httpx gives -------------------------------------------------
PROOF = ("prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason")


def _proof(r: RequestResult) -> tuple:
    return (r.status, r.error, r.saw_done, r.n_output_ids, len(r.event_ns), {k: r.meta_info.get(k) for k in PROOF},
            "first_token_latency" in r.meta_info)


async def _context_then_append(topo, lean: bool) -> list[RequestResult]:
    """Caches flushed on every engine, a 300-token context, then three appends to it at once."""
    engines = [topo.colocated] if topo.colocated else [*topo.prefill, *topo.decode]
    async with StreamClient(topo.entry_url, lean=lean) as client:
        for engine in engines:
            assert (await client.post_json(engine + "/flush_cache")).status_code == 200
        ctx = [1000 + i for i in range(300)]
        first = await client.generate(ctx, 1)
        appends = await asyncio.gather(*(client.generate(ctx + [7000 + i, 7001], 5) for i in range(3)))
        return [first, *appends]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["colocated", "pd"])
def test_lean_reader_gives_the_same_tokens_meta_info_and_proof_as_httpx(kind, tmp_path):
    """Through the sim engine (aiohttp's chunks) and the real router (its own chunks): same proof fields."""
    with start_topology(TopologyConfig(kind=kind), tmp_path) as topo:
        lean = asyncio.run(_context_then_append(topo, lean=True))
        ref = asyncio.run(_context_then_append(topo, lean=False))
    assert [_proof(r) for r in lean] == [_proof(r) for r in ref]
    assert [r.meta_info["cached_tokens"] for r in lean] == [0, 300, 300, 300]
    assert all(r.n_output_ids == 5 and len(r.event_ns) == 5 for r in lean[1:])
    for r in lean:
        assert r.sent_ns < r.first_byte_ns <= r.event_ns[0] <= r.event_ns[-1] <= r.done_ns


FAULTS = ["truncate", "http500", "sse-error", "malformed"]
EXPECTED = {"truncate": "RemoteProtocolError", "http500": "HTTPStatus", "sse-error": "StreamError",
            "malformed": "MalformedEvent"}


@pytest.mark.slow
def test_injected_faults_are_the_same_errors_through_either_reader(tmp_path):
    """The sim's faults, request by request: a stream cut mid-body, HTTP 500, an SSE error event, a bad
    chunk, a stall past the read timeout; the lean reader names each as httpx did."""
    flags = [f"--sim-fault={f}@{i + 1}" for i, f in enumerate(FAULTS + FAULTS)] + \
        ["--sim-fault=stall@9:5", "--sim-fault=stall@10:5"]
    with start_topology(TopologyConfig(kind="colocated", sim_flags=tuple(flags)), tmp_path) as topo:
        async def go(lean: bool) -> list[RequestResult]:
            async with StreamClient(topo.colocated, lean=lean, timeout_s=0.5) as client:
                return [await client.generate([1, 2, 3], 3) for _ in FAULTS]

        async def stall(lean: bool) -> RequestResult:
            async with StreamClient(topo.colocated, lean=lean, timeout_s=0.5) as client:
                return await client.generate([1, 2, 3], 3)

        lean, ref = asyncio.run(go(True)), asyncio.run(go(False))
        stalls = [asyncio.run(stall(True)), asyncio.run(stall(False))]
    for fault, a, b in zip(FAULTS, lean, ref):
        assert a.error[0] == b.error[0] == EXPECTED[fault], (fault, a.error, b.error)
        assert (a.status, a.saw_done, len(a.event_ns)) == (b.status, b.saw_done, len(b.event_ns)), fault
    assert lean[0].status == 200 and len(lean[0].event_ns) == 1 and not lean[0].saw_done  # truncated after 1
    assert lean[1].status == 500 and lean[2].saw_done and lean[2].error[1].startswith("injected fault")
    assert [s.error[0] for s in stalls] == ["ReadTimeout", "ReadTimeout"]


# -- HTTP/1.1 framing and SSE, byte by byte -------------------------------------------------------------------
def _events(k: int) -> list[bytes]:
    return [json.dumps({"output_ids": list(range(i + 1)), "meta_info": {"cached_tokens": 7, "i": i}}).encode()
            for i in range(k)]


def _sse(events: list[bytes], eol: bytes) -> bytes:
    """Events as SSE, with what a reader must skip: a comment, an event name, a data field split over lines."""
    out = b":" + b" keep-alive" + eol + eol
    for i, ev in enumerate(events):
        if i == 0:  # split where a newline is JSON whitespace: the reader joins data lines with one
            cut = ev.index(b", ") + 1
            out += b"event: message" + eol + b"data: " + ev[:cut] + eol + b"data:" + ev[cut:] + eol + eol
        else:
            out += b"data: " + ev + eol + eol
    return out + b"data: [DONE]" + eol + eol


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, i = b"", 0
    for n in sizes + [len(body)]:
        piece = body[i:i + max(n, 1)]
        if not piece:
            break
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        i += len(piece)
    return out + b"0\r\nX-Trailer: 1\r\n\r\n"


def _framed(body: bytes, framing: str, sizes: list[int]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if framing == "chunked":
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, sizes)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return head + b"Connection: close\r\n\r\n" + body  # the body ends when the connection does


class _FakeTransport:
    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> None:
        return None


def _feed(wire: bytes, cuts: list[int], eof: bool) -> RequestResult:
    async def go() -> RequestResult:
        conn, result = Exchange(), RequestResult(sent_ns=0)
        conn.transport = _FakeTransport()  # type: ignore[assignment]
        conn.start(b"POST /generate HTTP/1.1\r\n\r\n", result, 60.0)
        edges = [0, *sorted(set(c % (len(wire) + 1) for c in cuts)), len(wire)]
        for a, b in zip(edges, edges[1:]):
            if b > a and not conn.done.done():
                conn.data_received(wire[a:b])
        if eof:
            conn.connection_lost(None)
        conn.decode_last()
        conn.close()
        return result
    return asyncio.run(go())


@given(k=st.integers(1, 4), framing=st.sampled_from(["chunked", "length", "eof"]),
       eol=st.sampled_from([b"\n", b"\r\n"]), sizes=st.lists(st.integers(1, 40), max_size=8),
       cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_a_stream_reads_the_same_however_its_bytes_are_split(k, framing, eol, sizes, cuts):
    """Chunked, Content-Length or close-delimited, LF or CRLF, read in any pieces: every content event stamped,
    the last one's meta_info and output ids kept, [DONE] seen, nothing else an event."""
    events = _events(k)
    r = _feed(_framed(_sse(events, eol), framing, sizes), cuts, eof=framing == "eof")
    assert r.error is None and r.status == 200 and r.saw_done
    assert len(r.event_ns) == k and r.n_output_ids == k and r.meta_info == {"cached_tokens": 7, "i": k - 1}


@given(cut=st.integers(1, 10_000))
def test_a_chunked_stream_cut_anywhere_before_done_is_an_error_never_a_result(cut):
    """The connection dies mid-response: RemoteProtocolError (inside the body or before the head ends) or
    TruncatedStream (a complete body without [DONE]); never a clean result."""
    wire = _framed(_sse(_events(3), b"\n"), "chunked", [17, 5])
    r = _feed(wire[:cut % wire.index(b"data: [DONE]")], [], eof=True)
    assert r.error is not None and r.error[0] in ("RemoteProtocolError", "TruncatedStream") and not r.saw_done


def test_an_error_status_keeps_its_body_and_a_non_json_event_is_malformed():
    body = b'{"error": {"message": "bad sampling_params"}}'
    r = _feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body) + body, [20, 50], eof=False)
    assert r.status == 400 and r.error == ("HTTPStatus", "HTTP 400: " + body.decode()) and not r.event_ns
    r = _feed(_framed(b'data: {"output_ids": [1]}\n\ndata: [1, 2]\n\ndata: [DONE]\n\n', "chunked", []), [], False)
    assert r.error == ("MalformedEvent", "[1, 2]") and len(r.event_ns) == 1 and not r.saw_done


def test_an_sse_error_event_is_recorded_and_the_stream_read_to_done():
    wire = _framed(b'data: {"output_ids": [1]}\n\ndata: {"error": {"message": "aborted", "code": 500}}\n\n'
                   b"data: [DONE]\n\n", "chunked", [30])
    r = _feed(wire, [7, 40, 80], eof=False)
    assert r.error == ("StreamError", "aborted") and r.saw_done and len(r.event_ns) == 1


# -- connections opened ahead ---------------------------------------------------------------------------------
class _RawServer:
    """Loopback server: records when each connection was accepted and its request arrived, then answers
    with `wire` in pieces; `refuse_first` closes the first connection unasked."""

    def __init__(self, wire: bytes, refuse_first: bool = False) -> None:
        self.wire, self.refuse_first = wire, refuse_first
        self.seen: list[tuple[int, int, bytes]] = []
        self.accepted = 0

    async def __aenter__(self) -> "_RawServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/../prefix"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = time.perf_counter_ns()
        self.accepted += 1
        try:
            if self.refuse_first and self.accepted == 1:
                return
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))
            self.seen.append((accepted, time.perf_counter_ns(), head + body))
            for i in range(0, len(self.wire), 50):
                writer.write(self.wire[i:i + 50])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_prepared_connections_are_open_before_any_request_is_sent():
    """prepare(3): the requests go on three connections accepted before any send(), each on its own,
    sent in one write with the path, Host and key; after the burst the client keeps three ready again."""
    wire = _framed(_sse(_events(2), b"\n"), "chunked", [9])

    async def go():
        async with _RawServer(wire) as srv, StreamClient(srv.url, api_key="k3y") as client:
            await client.prepare(3)
            await asyncio.sleep(0.05)
            called = time.perf_counter_ns()
            results = await asyncio.gather(*(client.send(build_body([1, 2], 2)) for _ in range(3)))
            spares = len(client._pool._spares)
            return srv, called, results, spares

    srv, called, results, spares = asyncio.run(go())
    assert all(r.error is None and len(r.event_ns) == 2 and r.saw_done for r in results)
    assert len(srv.seen) == 3 and srv.accepted == 6 and spares == 3
    assert max(accepted for accepted, _, _ in srv.seen) < called < min(r.sent_ns for r in results)
    head = srv.seen[0][2]
    assert head.startswith(b"POST /v1/../prefix/generate HTTP/1.1\r\n") and b"Authorization: Bearer k3y\r\n" in head
    assert b"Host: 127.0.0.1:" in head and head.endswith(build_body([1, 2], 2))


def test_a_prepared_connection_the_server_closed_is_not_used():
    wire = _framed(_sse(_events(1), b"\n"), "length", [])

    async def go():
        async with _RawServer(wire, refuse_first=True) as srv, StreamClient(srv.url) as client:
            await client.prepare(1)
            await asyncio.sleep(0.05)  # the server's FIN arrives
            return await client.send(build_body([1], 1))

    r = asyncio.run(go())
    assert r.error is None and r.saw_done and len(r.event_ns) == 1


@TRANSPORTS
def test_a_refused_connection_is_a_connect_error(lean):
    async def go():
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        srv.close()
        await srv.wait_closed()
        async with StreamClient(f"http://127.0.0.1:{port}", lean=lean) as client:
            return await client.send(build_body([1], 1))

    r = asyncio.run(go())
    assert r.error[0] == "ConnectError" and r.status is None and r.done_ns >= r.sent_ns
