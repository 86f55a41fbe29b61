"""The simulated engine's OpenAI-compatible routes: /v1/completions, /v1/chat/completions and
/v1/models/{model}, on the same engine, radix cache and P/D hand-off as /generate.

    add_openai_routes(server, app.router)      # SimServer.app() does this

As in SGLang, a streamed answer's headers go out with its first chunk (the first token), so a request
refused before that is an HTTP error, not an SSE event. /generate's injected faults (--sim-fault) do
not apply here. Shapes and checks: sim/openai.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from typing import Any, AsyncGenerator

from aiohttp import web

from pytest_ppd.sim.api import ApiError, GenerateRequest, parse_generate
from pytest_ppd.sim.engine import SimRequest
from pytest_ppd.sim.openai import (OpenAIError, OpenAIRequest, chat_body, chat_chunk, chat_usage_chunk,
                                   completion_body, completion_chunk, completion_usage_chunk, dumps, error_body,
                                   parse_chat, parse_completion, sse, usage, validation_error)
from pytest_ppd.sim.server import SimServer, _State

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
DONE = b"data: [DONE]\n\n"


class _KvFailure(Exception):
    """The decode side never got its room's KV: SGLang aborts the request with status 500."""


def add_openai_routes(server: SimServer, router: web.UrlDispatcher) -> None:
    routes = OpenAIRoutes(server)
    router.add_post("/v1/completions", routes.completions)
    router.add_post("/v1/chat/completions", routes.chat_completions)
    router.add_get("/v1/models/{model:.+}", routes.retrieve_model)


class OpenAIRoutes:
    """Handlers bound to one SimServer."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def retrieve_model(self, request: web.Request) -> web.Response:
        args = self.server.args
        name = args.served_model_name or args.model_path
        model = request.match_info["model"]
        if model != name:
            return web.json_response({"error": {"message": f"The model '{model}' does not exist",
                                                "type": "invalid_request_error", "param": "model",
                                                "code": "model_not_found"}}, status=404)
        return web.json_response({"id": model, "object": "model", "created": int(time.time()), "owned_by": "sglang",
                                  "root": model, "parent": None, "max_model_len": self.server.cfg.context_length})

    # -- request ---------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        """FastAPI's order: JSON decoding (for a JSON content type), then SGLang's content-type check."""
        media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        raw = await request.read()
        if media == "application/json":
            if not raw:
                raise validation_error([{"type": "missing", "loc": ("body",), "msg": "Field required",
                                         "input": None}])
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                pos = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
                raise validation_error([{"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error",
                                         "input": {}, "ctx": {"error": why}}]) from None
        raise validation_error([{"loc": ["header", "content-type"], "type": "value_error",
                                 "msg": "Unsupported Media Type: Only 'application/json' is allowed"}])

    def _parse(self, kind: str, body: Any) -> tuple[OpenAIRequest, GenerateRequest]:
        s, tok = self.server, self.server.tokenizer
        if kind == "chat":
            if tok is None:
                raise OpenAIError("chat needs a tokenizer, and this engine runs with --skip-tokenizer-init; "
                                  "use /v1/completions with token ids, or start it without that flag")
            oai = parse_chat(body, tok.apply_chat_template, s.cfg.context_length)
        else:
            oai = parse_completion(body)
        # A chat template already holds its special tokens; a completion prompt gets them (SGLang's tokenizer call).
        encode = None if tok is None else (lambda text: tok.encode(text, special=kind == "completion"))
        try:
            gen = parse_generate(oai.generate_body(), vocab_size=s.cfg.model.vocab_size,
                                 context_length=s.cfg.context_length, pool_tokens=s.cfg.pool_tokens, encode=encode)
        except ApiError as exc:
            raise OpenAIError(exc.message, status=exc.status) from None
        if s.args.disaggregation_mode == "decode" and gen.bootstrap_room is None:
            raise OpenAIError("Decode mode needs bootstrap_host/port/room: send requests through the P/D router.")
        return oai, gen

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        created = time.perf_counter()
        try:
            oai, gen = self._parse(kind, await self._body(request))
        except OpenAIError as exc:
            return web.json_response(exc.body, status=exc.status, dumps=dumps)
        if oai.stream:
            return await self._stream(request, oai, gen, created)
        req: SimRequest | None = None
        try:
            async with aclosing(self._tokens(gen, created)) as tokens:
                async for step in tokens:
                    req = step[0]
        except _KvFailure as exc:
            return web.json_response(error_body(str(exc), "500", 500), status=500, dumps=dumps)
        assert req is not None
        text, finish = self._text(req), req.finish_reason["type"] if req.finish_reason else None
        build = chat_body if kind == "chat" else completion_body
        if oai.echo:
            text = self._prompt_text(oai, gen) + text
        return web.json_response(build(req.rid, int(time.time()), oai.model, text, finish, self._usage(req)),
                                 dumps=dumps)

    # -- the engine --------------------------------------------------------------------------------
    async def _tokens(self, gen: GenerateRequest, created: float) -> AsyncGenerator[tuple[SimRequest, bool], None]:
        """Run one request on the engine as /generate does; yields (request, finished) after each token."""
        s = self.server
        req = SimRequest(gen.rid or uuid.uuid4().hex, gen.input_ids, gen.max_new_tokens, arrival_s=created,
                         host_s=time.perf_counter() - created)
        state = _State(req, created)
        s.states[id(req)] = state
        try:
            if s.profile.request_overhead_s:
                await asyncio.sleep(max(created + s.profile.request_overhead_s - time.perf_counter(), 0.0))
            if s.args.disaggregation_mode == "decode":
                failure = await s._receive_kv(gen, req, {})
                if failure:
                    raise _KvFailure(failure)
            state.wait_queue_entry_s = time.perf_counter()
            s.engine.add(req)
            s.runner.notify()
            while True:
                event = await state.queue.get()
                await s._stretch(state)
                yield req, event.finished
                if event.finished:
                    return
        finally:
            s.states.pop(id(req), None)
            if req.finished_s is None:
                s.engine.abort(req)
                s.runner.notify()
            s._publish_room(gen, req)

    def _text(self, req: SimRequest) -> str:
        tok = self.server.tokenizer
        return tok.decode(req.output_ids) if tok is not None else ""

    def _prompt_text(self, oai: OpenAIRequest, gen: GenerateRequest) -> str:
        tok = self.server.tokenizer
        if isinstance(oai.prompt, str):
            return oai.prompt
        return tok.decode(gen.input_ids) if tok is not None else ""

    def _usage(self, req: SimRequest, *, cache: bool = True) -> dict[str, Any]:
        cached = req.cached_tokens if cache and self.server.args.enable_cache_report else None
        return usage(req.prompt_len, len(req.output_ids), cached)

    # -- streaming ---------------------------------------------------------------------------------
    async def _stream(self, request: web.Request, oai: OpenAIRequest, gen: GenerateRequest,
                      created_s: float) -> web.StreamResponse:
        """serving_completions / serving_chat: one chunk per token (its new text), then the finish
        chunk (chat), the usage chunk (stream_options.include_usage), then [DONE]."""
        created, chat = int(time.time()), oai.kind == "chat"
        resp: web.StreamResponse | None = None
        text, seen, req = "", 0, None
        try:
            async with aclosing(self._tokens(gen, created_s)) as tokens:
                async for req, finished in tokens:
                    tok = self.server.tokenizer
                    new = tok.decode_more(req.output_ids, seen, text) if tok is not None else ""
                    delta, text, seen = new[len(text):], new, len(req.output_ids)
                    finish = req.finish_reason["type"] if finished and req.finish_reason else None
                    out = b""
                    if resp is None:
                        resp = web.StreamResponse(headers=SSE_HEADERS)
                        await resp.prepare(request)
                        if chat:
                            out += sse(chat_chunk(req.rid, created, oai.model, {"role": "assistant", "content": ""}))
                        elif oai.echo:
                            delta = self._prompt_text(oai, gen) + delta
                    if chat:
                        use = self._usage(req) if oai.continuous_usage else None
                        out += sse(chat_chunk(req.rid, created, oai.model, {"content": delta}, None, use)) if delta \
                            else b""
                    else:
                        use = self._usage(req, cache=False) if oai.continuous_usage else None
                        out += sse(completion_chunk(req.rid, created, oai.model, delta, finish, use))
                    await resp.write(out)
        except _KvFailure as exc:
            if resp is None:
                resp = web.StreamResponse(headers=SSE_HEADERS)
                await resp.prepare(request)
            await resp.write(sse({"error": error_body(str(exc), "INTERNAL_SERVER_ERROR", 500)}) + DONE)
            return resp
        assert req is not None and resp is not None
        out = b""
        if chat and req.finish_reason:
            out += sse(chat_chunk(req.rid, created, oai.model, {}, req.finish_reason["type"]))
        if oai.include_usage:
            build = chat_usage_chunk if chat else completion_usage_chunk
            out += sse(build(req.rid, created, oai.model, self._usage(req)))
        await resp.write(out + DONE)
        await resp.write_eof()
        return resp
