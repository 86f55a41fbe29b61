"""The streaming client against a tiny SSE server on loopback: stamps, meta_info, and every failure as data."""

import asyncio
import json

from aiohttp import web

from pytest_ppd.client.stream import StreamClient, build_body

SCRIPTS = {  # what the server writes for each request's rid
    "ok": [{"output_ids": [5], "meta_info": {"cached_tokens": 3}}, {"output_ids": [5, 6]}, "[DONE]"],
    "error": [{"error": {"message": "scheduler aborted"}}, "[DONE]"],
    "truncated": [{"output_ids": [5]}],
    "malformed": ['{"output_ids": [1, 2'],
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


async def _run(rids):
    app = web.Application()
    app.router.add_post("/generate", _generate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with StreamClient(f"http://127.0.0.1:{port}") as client:
            return {rid: await client.send(build_body([1, 2, 3], 2, rid=rid)) for rid in rids}
    finally:
        await runner.cleanup()


def test_every_outcome_of_a_stream_is_recorded_as_data():
    out = asyncio.run(_run(["ok", "error", "truncated", "malformed", "http400"]))
    ok = out["ok"]
    assert ok.error is None and ok.saw_done and ok.n_output_ids == 2 and ok.meta_info == {"cached_tokens": 3}
    assert len(ok.event_ns) == 2 and ok.sent_ns < ok.first_byte_ns <= ok.event_ns[0] < ok.event_ns[1] <= ok.done_ns
    assert ok.ttft_ns == ok.event_ns[0] - ok.sent_ns and ok.itl_ns == [ok.event_ns[1] - ok.event_ns[0]]
    assert out["error"].error == ("StreamError", "scheduler aborted") and out["error"].saw_done
    assert out["truncated"].error[0] == "TruncatedStream" and not out["truncated"].saw_done
    assert out["malformed"].error[0] == "MalformedEvent"
    assert out["http400"].error[0] == "HTTPStatus" and out["http400"].status == 400


def test_bodies_carry_exact_ids_greedy_and_ignoring_eos():
    body = json.loads(build_body([7, 8], 3, rid="x"))
    assert body["input_ids"] == [7, 8] and body["stream"] is True and body["rid"] == "x"
    assert body["sampling_params"] == {"max_new_tokens": 3, "ignore_eos": True, "temperature": 0.0}
    assert json.loads(build_body("[1,2]", 1))["input_ids"] == [1, 2]  # pre-encoded ids pass through
