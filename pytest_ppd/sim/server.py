"""The simulated engine's HTTP server: SGLang's API on the wall-clock driver.

One process = one engine. In P/D mode a prefill engine also serves its
bootstrap port, through which the decode engine waits for each room's KV (a
real inter-process channel); the decode side then spends the modeled transfer
time on its link before decoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from pytest_ppd.sim.api import ApiError, GenerateRequest, contract_error, error_body, parse_generate, stream_error_event
from pytest_ppd.sim.args import SimConfig, engine_for, profile_for
from pytest_ppd.sim.clock import WallClockRunner
from pytest_ppd.sim.engine import Event, SimRequest
from pytest_ppd.sim.faults import Fault, FaultPlan
from pytest_ppd.sim.info import meta_info, model_info_body, server_info_body
from pytest_ppd.sim.pd import KvBootstrap
from pytest_ppd.sim.tokenizer import SimTokenizer

log = logging.getLogger("pytest_ppd.sim")
OPEN_PATHS = {"/health", "/health_generate", "/ready", "/metrics"}  # SGLang's utils/auth.py: no key needed


@dataclass
class _State:
    req: SimRequest
    created_s: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    wait_queue_entry_s: float = 0.0
    stretched: bool = False


class SimServer(KvBootstrap):
    """Routes and state of one simulated engine."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg, self.args = cfg, cfg.args
        self.profile = profile_for(self.args)
        self.engine = engine_for(cfg, self.profile)
        self.slow_prompts = dict(cfg.slow_prompts)  # prompt length -> latency factor (--sim-slow-prompt)
        self.runner = WallClockRunner(self.engine, self._deliver)
        self.tokenizer = None if self.args.skip_tokenizer_init else SimTokenizer(
            self.args.tokenizer_path, cfg.model.vocab_size, model_dir=self.args.model_path)
        self.states: dict[int, _State] = {}
        self.rooms: dict[int, tuple[float, asyncio.Future]] = {}
        self.link_free_s = 0.0
        self.http: httpx.AsyncClient | None = None
        self.served = 0

    # -- plumbing ----------------------------------------------------------
    def _deliver(self, event: Event) -> None:
        state = self.states.get(id(event.req))
        if state is not None:
            state.queue.put_nowait(event)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = self.args.api_key
        if key and request.path not in OPEN_PATHS:
            if request.headers.get("Authorization", "") != f"Bearer {key}":
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth], client_max_size=1 << 30)
        r = app.router
        r.add_post("/generate", self.generate)
        r.add_get("/health", self.health)
        r.add_get("/ready", self.health)  # SGLang: 200 once it takes requests, without running one
        r.add_get("/health_generate", self.health_generate)
        for path in ("/flush_cache",):
            r.add_post(path, self.flush_cache)
            r.add_get(path, self.flush_cache)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.model_info)
        r.add_get("/v1/models", self.models)
        r.add_get("/get_load", self.get_load)
        from pytest_ppd.sim.openai_server import add_openai_routes  # /v1/completions, /v1/chat/completions

        add_openai_routes(self, r)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.runner.start()
        self.http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(self.args.sim_kv_timeout))

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.runner.stop()
        if self.http:
            await self.http.aclose()

    # -- simple endpoints --------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def health_generate(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def flush_cache(self, request: web.Request) -> web.Response:
        """SGLang's /flush_cache[?timeout=S]: refused while anything runs; with a timeout, waits up to S
        seconds for the engine to go idle (scheduler_components/flush_wrapper.py)."""
        try:
            timeout = float(request.query.get("timeout", "0"))
        except ValueError:
            timeout = -1.0
        if not timeout >= 0.0:
            return web.json_response({"detail": [{"type": "greater_than_equal", "loc": ["query", "timeout"],
                                                  "msg": "Input should be greater than or equal to 0"}]},
                                     status=422)
        deadline = time.perf_counter() + timeout
        while not self.engine.idle() and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self.engine.flush():
            return web.Response(text="Cache flushed.\nPlease check backend logs for more details. "
                                "(When there are running or waiting requests, the operation will not be performed.)\n")
        why = "Timed out waiting for idle state." if timeout > 0 else (
            "Cache not flushed. Please check backend logs for more details. "
            "(When there are running or waiting requests, the operation will not be performed.)\n")
        return web.Response(status=400, text=why)

    async def model_info(self, _request: web.Request) -> web.Response:
        return web.json_response(model_info_body(self.cfg))

    async def models(self, _request: web.Request) -> web.Response:
        name = self.args.served_model_name or self.args.model_path
        return web.json_response({"object": "list", "data": [{
            "id": name, "object": "model", "created": int(time.time()), "owned_by": "sglang", "root": name,
            "parent": None, "max_model_len": self.cfg.context_length}]})

    async def get_load(self, _request: web.Request) -> web.Response:
        e = self.engine
        return web.json_response([{"dp_rank": 0, "num_reqs": len(e.running) + len(e.waiting),
                                   "num_waiting_reqs": len(e.waiting), "num_tokens": e.used_tokens}])

    async def server_info(self, _request: web.Request) -> web.Response:
        extra = {"steps": self.runner.steps, "loop_lateness_s": self.runner.lateness_s, "served": self.served}
        return web.json_response(server_info_body(self.cfg, self.engine, self.profile, extra))

    # -- /generate -----------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        """SGLang's order: JSON, contract (400 {"error": text}), then ValueErrors (400, or in-stream)."""
        created = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return web.json_response({"detail": [{"type": "json_invalid", "loc": ["body", 0],
                                                  "msg": "JSON decode error", "ctx": {"error": str(exc)}}]},
                                     status=422)
        problem = contract_error(body)
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        self.served += 1
        faults = FaultPlan(self.cfg.faults).active(self.served)
        if "crash" in faults:
            log.error("injected fault: crash at request %d", self.served)
            os._exit(1)
        if "http500" in faults:
            return web.json_response(error_body("injected fault: internal server error", 500), status=500)
        resp: web.StreamResponse | None = None
        if body.get("stream") is True:  # headers go out at once, as with SGLang's StreamingResponse
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
        try:
            gen = parse_generate(body, vocab_size=self.cfg.model.vocab_size,
                                 context_length=self.cfg.context_length, pool_tokens=self.cfg.pool_tokens,
                                 encode=self.tokenizer.encode if self.tokenizer else None)
            if self.args.disaggregation_mode == "decode" and gen.bootstrap_room is None:
                raise ApiError("Decode mode needs bootstrap_host/port/room: send requests through the P/D router.")
        except ApiError as exc:
            return await self._error(request, resp, exc.message, exc.status)
        if resp is not None and "stall" in faults:
            await asyncio.sleep(faults["stall"].arg)
        if resp is not None and "sse-error" in faults:
            return await self._error(request, resp, "injected fault: the scheduler aborted the request", 500)
        req = SimRequest(gen.rid or uuid.uuid4().hex, gen.input_ids, gen.max_new_tokens, arrival_s=created,
                         host_s=time.perf_counter() - created)
        state = _State(req, created)
        if gen.max_new_tokens == 0:
            req.finish_reason, req.finished_s = {"type": "length", "length": 0}, time.perf_counter()
            return await self._send_final(request, resp, gen, state)
        self.states[id(req)] = state
        try:
            if self.profile.request_overhead_s:
                # The modeled per-request serving overhead runs from arrival: this host's parsing is part of it.
                await asyncio.sleep(max(created + self.profile.request_overhead_s - time.perf_counter(), 0.0))
            if self.args.disaggregation_mode == "decode":
                failure = await self._receive_kv(gen, req, faults)
                if failure:
                    return await self._error(request, resp, failure, 500)
            state.wait_queue_entry_s = time.perf_counter()
            self.engine.add(req)
            self.runner.notify()
            if resp is not None:
                return await self._stream(request, resp, gen, state, faults)
            while not (await state.queue.get()).finished:
                pass
            await self._stretch(state)
            return web.json_response(self._chunk(gen, state, True))
        finally:
            self.states.pop(id(req), None)
            if req.finished_s is None:
                self.engine.abort(req)
                self.runner.notify()
            self._publish_room(gen, req)

    async def _error(self, request: web.Request, resp: web.StreamResponse | None, message: str,
                     status: int) -> web.StreamResponse:
        if resp is None:
            return web.json_response(error_body(message, status), status=status)
        await resp.write(b"data: " + json.dumps(stream_error_event(message, status)).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _send_final(self, request: web.Request, resp: web.StreamResponse | None, gen: GenerateRequest,
                          state: _State) -> web.StreamResponse:
        if resp is None:
            return web.json_response(self._chunk(gen, state, True))
        await resp.write(b"data: " + json.dumps(self._chunk(gen, state, True)).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def _chunk(self, gen: GenerateRequest, state: _State, final: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"output_ids": list(state.req.output_ids),
                               "meta_info": meta_info(state.req, state.created_s, state.wait_queue_entry_s,
                                                      final, metrics=self.args.enable_metrics)}
        if self.tokenizer is not None:
            out = {"text": self.tokenizer.decode(state.req.output_ids), **out}
        return out

    async def _stretch(self, state: _State) -> None:
        """--sim-slow-prompt: this request's server time so far, times FACTOR (a slower engine, end to end)."""
        factor = self.slow_prompts.get(state.req.prompt_len, 1.0)
        if factor > 1.0 and not state.stretched:
            state.stretched = True
            await asyncio.sleep((factor - 1.0) * (time.perf_counter() - state.created_s))

    async def _stream(self, request: web.Request, resp: web.StreamResponse, gen: GenerateRequest, state: _State,
                      faults: dict[str, Fault]) -> web.StreamResponse:
        while True:
            event = await state.queue.get()
            await self._stretch(state)
            if "malformed" in faults:
                await resp.write(b"data: {\"output_ids\": [1, 2\n\n")
                faults = {}
                continue
            await resp.write(b"data: " + json.dumps(self._chunk(gen, state, event.finished)).encode() + b"\n\n")
            if "truncate" in faults and request.transport is not None:
                request.transport.close()  # the connection dies mid-stream: no [DONE]
                return resp
            if event.finished:
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def serve(cfg: SimConfig, ready: asyncio.Event | None = None) -> None:
    """Run the engine's HTTP server (and bootstrap server in prefill mode) until cancelled."""
    server = SimServer(cfg)
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, cfg.args.host, cfg.args.port, reuse_address=True).start()
    boot = None
    if cfg.args.disaggregation_mode == "prefill":
        boot = web.AppRunner(server.bootstrap_app(), access_log=None, handle_signals=False)
        await boot.setup()
        await web.TCPSite(boot, cfg.args.host, cfg.args.disaggregation_bootstrap_port, reuse_address=True).start()
    log.info("The server is fired up and ready to roll!")
    if ready:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        if boot:
            await boot.cleanup()
        await runner.cleanup()
