"""The engine a profile measures: one colocated engine in virtual time, or a served one over HTTP.

    engine = open_engine("sim", "Llama-3.1-8B", "H100-SXM", 1, workdir=Path("w"))
    results = engine.send([[1000, 1001, 1002]], max_new=5)    # RequestResult per prompt, sent together
    engine.flush(); engine.reset(); engine.close()

Both answer with the streaming client's ``RequestResult`` (one content event per
streamed chunk, SGLang's ``meta_info`` with ``cached_tokens``), so the sweeps
and their proofs are the same code for every backend. Times: the virtual clock
(virtual), or the host's perf_counter as seen by the client, as AIPerf times them
(sim, sglang, external).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from pytest_ppd.client.runner import flush_caches
from pytest_ppd.client.stream import RequestResult, StreamClient, build_body
from pytest_ppd.client.virtual import as_result
from pytest_ppd.errors import ConfigError, MeasurementError
from pytest_ppd.sim.deployment import Deployment
from pytest_ppd.specs import model_spec

BACKENDS = ("virtual", "sim", "sglang", "external")
_MODULE_ARGS = 3  # python -m <module>
TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class EngineFacts:
    """What the profiled engine is, as the sweeps see it."""

    argv: list[str]
    context_length: int  # what a request may span (SGLang's --context-length or the model's)
    max_context_length: int  # what the sweeps use: min(context_length, the longest input the pool takes)
    max_kv_tokens: int  # SGLang's max_total_num_tokens (its "KV Cache is allocated ... #tokens")
    page_size: int


class ProfileEngine(Protocol):
    facts: EngineFacts
    vocab_size: int
    clock: str

    def send(self, prompts: Sequence[list[int]], max_new: int) -> list[RequestResult]: ...
    def flush(self) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class VirtualEngine:
    """A colocated engine of the deployment simulator, rebuilt fresh for each sweep (reset)."""

    clock = "virtual (discrete-event, integer ns; no host time)"

    def __init__(self, build: Callable[[], tuple[Deployment, list[list[str]]]]) -> None:
        self._build = build
        self.dep, argvs = build()
        cfg = self.dep.nodes[0].cfg
        self.vocab_size = cfg.model.vocab_size
        longest = min(cfg.context_length, cfg.resolved.max_req_input_len)
        self.facts = EngineFacts(argvs[0][_MODULE_ARGS:], cfg.context_length, longest, cfg.pool_tokens,
                                 self.dep.page_size)

    def send(self, prompts: Sequence[list[int]], max_new: int) -> list[RequestResult]:
        handles = [self.dep.submit(p, max_new, check_ids=False) for p in prompts]
        self.dep.run_until_done(handles)
        return [as_result(h) for h in handles]

    def flush(self) -> None:
        self.dep.run()
        if not self.dep.flush():
            raise MeasurementError("the virtual deployment still has requests in flight; cannot flush")

    def reset(self) -> None:
        self.dep = self._build()[0]

    def close(self) -> None:
        return None


class HttpEngine:
    """A served engine (the sim's, SGLang's, or one you run): /generate with exact ids, /flush_cache."""

    clock = "host perf_counter at the client (first streamed chunk - request sent), as AIPerf times it"

    def __init__(self, url: str, model: str, *, api_key: str | None = None, argv: Sequence[str] = (),
                 on_close: Callable[[], None] | None = None) -> None:
        from pytest_ppd.targets import pool_tokens_of, server_info

        self.url, self._on_close = url.rstrip("/"), on_close
        info = server_info(self.url, api_key)
        pool = pool_tokens_of(info)
        if not pool:
            raise ConfigError(f"{self.url}/server_info reports no max_total_num_tokens; is it an SGLang engine "
                              "(not a router)? ppd profile measures one colocated engine")
        spec = model_spec(model)
        context = int(info.get("context_length") or spec.context_length)
        longest = int(info.get("max_req_input_len") or context)
        self.vocab_size = spec.vocab_size
        self.facts = EngineFacts(list(argv), context, min(context, longest), pool, int(info.get("page_size") or 1))
        self._runner = asyncio.Runner()
        self._client = StreamClient(self.url, api_key=api_key, timeout_s=TIMEOUT_S)
        self._runner.run(self._client.__aenter__())

    def send(self, prompts: Sequence[list[int]], max_new: int) -> list[RequestResult]:
        bodies = [build_body(p, max_new) for p in prompts]  # encoded before any is sent

        async def together() -> list[RequestResult]:
            return list(await asyncio.gather(*(self._client.send(b) for b in bodies)))

        return self._runner.run(together())

    def flush(self) -> None:
        self._runner.run(flush_caches(self._client, (self.url,)))

    def reset(self) -> None:
        self.flush()

    def close(self) -> None:
        try:
            self._runner.run(self._client.__aexit__(None, None, None))
            self._runner.close()
        finally:
            if self._on_close is not None:
                self._on_close()


def open_engine(backend: str, model: str, gpu: str, tp: int, *, context_length: int | None = None,
                max_total_tokens: int | None = None, sim_flags: Sequence[str] = (), url: str | None = None,
                api_key: str | None = None, workdir: Path | None = None) -> ProfileEngine:
    """The engine to profile: built (virtual), started (sim, sglang: one colocated engine) or reached (external)."""
    from pytest_ppd.servers.topology import TopologyConfig, start_topology

    if backend not in BACKENDS:
        raise ConfigError(f"'{backend}' is not a profile backend; valid: {', '.join(BACKENDS)}")
    if backend == "external":
        if not url:
            raise ConfigError("--backend external needs --url of one SGLang engine, e.g. http://127.0.0.1:30000")
        return HttpEngine(url, model, api_key=api_key)
    if url:
        raise ConfigError(f"--url is for --backend external; --backend {backend} starts its own engine")
    cfg = TopologyConfig(backend="sim" if backend == "virtual" else backend, kind="colocated", model=model, gpu=gpu,
                         tp_size=tp, context_length=context_length, max_total_tokens=max_total_tokens,
                         sim_flags=tuple(sim_flags) if backend != "sglang" else (), api_key=api_key)
    if backend == "virtual":
        from pytest_ppd.servers.virtual import virtual_topology

        return VirtualEngine(lambda: virtual_topology(cfg))
    if sim_flags and backend == "sglang":
        raise ConfigError("--sim-profile is a sim setting; SGLang runs the GPU it has")
    started = start_topology(cfg, workdir)
    topo = started.__enter__()
    try:
        assert topo.colocated is not None
        engine = HttpEngine(topo.colocated, model, api_key=api_key,
                            argv=topo.argvs()[0][_MODULE_ARGS:], on_close=lambda: started.__exit__(None, None, None))
    except BaseException:
        started.__exit__(None, None, None)
        raise
    return engine
