"""P/D hand-off of the simulated engine: the prefill side's bootstrap channel, the decode side's wait.

A prefill engine publishes each room's result (first token, cached tokens) on its bootstrap port; the
decode engine long-polls that port over real HTTP, then spends the modeled transfer time of the whole
prompt's KV on its link (serialized: one link per engine) before it decodes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import httpx
from aiohttp import web

from pytest_ppd.sim.api import GenerateRequest, realtime
from pytest_ppd.sim.engine import SimRequest
from pytest_ppd.sim.faults import Fault

if TYPE_CHECKING:
    from pytest_ppd.sim.args import SimConfig


class KvBootstrap:
    """Mixed into SimServer: the rooms and the link it owns."""

    cfg: "SimConfig"
    args: Any
    rooms: dict[int, tuple[float, asyncio.Future]]
    states: dict[int, Any]  # the server's in-flight requests (their created_s), by id(SimRequest)
    link_free_s: float
    http: httpx.AsyncClient | None
    health: Callable[[web.Request], Awaitable[web.Response]]  # the server's own /health

    def _room(self, room: int) -> asyncio.Future:
        now = time.monotonic()
        for key, (born, fut) in list(self.rooms.items()):
            if now - born > self.args.sim_kv_timeout:
                fut.cancel()
                del self.rooms[key]
        if room not in self.rooms:
            self.rooms[room] = (now, asyncio.get_running_loop().create_future())
        return self.rooms[room][1]

    def _publish_room(self, gen: GenerateRequest, req: SimRequest) -> None:
        if self.args.disaggregation_mode != "prefill" or gen.bootstrap_room is None:
            return
        fut = self._room(gen.bootstrap_room)
        if fut.done():
            return
        if req.finished_s is not None and req.output_ids:
            fut.set_result({"first_token": req.output_ids[0], "cached_tokens": req.cached_tokens,
                            "prompt_tokens": req.prompt_len, "prefill_finished_ts": realtime(req.finished_s)})
        else:
            fut.set_result({"error": "prefill aborted before its KV was ready"})

    async def bootstrap_kv(self, request: web.Request) -> web.Response:
        try:
            room = int(request.match_info["room"])
        except ValueError:
            return web.json_response({"error": "room must be an integer"}, status=400)
        fut = self._room(room)
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), timeout=self.args.sim_kv_timeout)
        except asyncio.TimeoutError:
            return web.json_response({"error": f"no prefill for room {room} within "
                                               f"{self.args.sim_kv_timeout}s"}, status=504)
        self.rooms.pop(room, None)
        return web.json_response(result)

    def bootstrap_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/sim/kv/{room}", self.bootstrap_kv)
        return app

    async def _receive_kv(self, gen: GenerateRequest, req: SimRequest, faults: dict[str, Fault]) -> str | None:
        """Decode side: wait for the room's prefill, then spend the link's transfer time."""
        assert self.http is not None
        if "kv-fail" in faults:
            return "KV transfer failed: injected fault (the room's KV never arrived)"
        host = gen.bootstrap_host or "127.0.0.1"
        port = gen.bootstrap_port or 8998
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/sim/kv/{gen.bootstrap_room}"
        try:
            resp = await self.http.get(url)
            info = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"KV transfer failed: bootstrap server {host}:{port} unreachable ({type(exc).__name__})"
        if resp.status_code != 200 or "error" in info:
            return f"KV transfer failed: {info.get('error', resp.status_code)}"
        nbytes = req.prompt_len * self.cfg.model.kv_bytes_per_token
        now = time.perf_counter()
        # The modeled transfer starts when the prefill finished, not when this host's poll came back
        # (both engines share the host's clock); it never starts in the past of this request.
        ready = now - max(time.time() - float(info.get("prefill_finished_ts", time.time())), 0.0)
        start = max(ready, self.link_free_s, self.states[id(req)].created_s if id(req) in self.states else ready)
        slow = faults["slow-kv"].arg if "slow-kv" in faults else 1.0
        self.link_free_s = start + self.cfg.link.transfer_s(nbytes) * slow
        await asyncio.sleep(self.link_free_s - now)
        req.preset_first_token = int(info["first_token"])
        req.preset_cached_tokens = int(info["cached_tokens"])
        return None


