"""The clients bench_vs_bench_serving.py compares ours with; each request's outcome is (client-side TTFT in ms,
the last meta_info, an error or None, the client's start stamp: time.perf_counter() seconds, the clock every
process on a Linux host shares).

* `OldStreamClient`: pytest-ppd's streaming client before the lean reader (httpx + httpx_sse, a new
  connection per stream opened inside the timed window, every event JSON-decoded), as it was.
* `bench_serving_generate`: SGLang 0.5.23's `async_request_sglang_generate`
  (python/sglang/benchmark/serving.py) redone step by step: an aiohttp session per request (its own
  connector, so a new connection), the payload dict serialized by `session.post(json=...)` after
  `st = time.perf_counter()`, `response.content` read line by line, each line stripped of `data: ` and
  orjson-decoded, TTFT at the first chunk with a non-empty `text`. The only addition: the last
  meta_info is kept, for the server's first_token_latency.
* `RealBenchServing`: the same function, SGLang's own code, in a worker process under an interpreter that
  has SGLang 0.5.23 (bench_serving_worker.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from httpx_sse import aconnect_sse

from pytest_ppd.client.stream import RequestResult, build_body

try:
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # bench_serving imports orjson; json is the stand-in where it is missing
    _loads = json.loads

Outcome = tuple[float | None, dict[str, Any], str | None, float]


class OldStreamClient:
    """pytest_ppd.client.stream.StreamClient as of commit f60398d (send() only)."""

    def __init__(self, base_url: str, timeout_s: float = 600.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=None))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, content: bytes) -> RequestResult:
        result = RequestResult(sent_ns=time.perf_counter_ns())
        try:
            async with aconnect_sse(self._client, "POST", "/generate", content=content,
                                    headers={"Content-Type": "application/json"}) as source:
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
                        continue
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


def outcome(result: RequestResult) -> Outcome:
    """A RequestResult as an Outcome."""
    error = f"{result.error[0]}: {result.error[1]}" if result.error else None
    ttft = result.ttft_ns / 1e6 if result.ttft_ns is not None else None
    return ttft, result.meta_info, error, result.sent_ns / 1e9


def body_of(ids: list[int], output_len: int) -> bytes:
    """Our clients' body: encoded before the start barrier, as the runner does."""
    return build_body(ids, output_len)


async def bench_serving_generate(api_url: str, prompt: list[int], output_len: int) -> Outcome:
    """async_request_sglang_generate's method, with bench_serving's defaults (temperature 0, ignore_eos, no
    logprobs, streaming)."""
    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=10 * 1024**2) as session:
        payload = {
            "input_ids": prompt,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": output_len, "ignore_eos": True},
            "stream": True, "lora_path": None, "return_logprob": False, "return_routed_experts": False,
            "logprob_start_len": -1,
        }
        ttft, meta, error = 0.0, {}, None
        st = time.perf_counter()
        try:
            async with session.post(url=api_url, json=payload, headers={}) as response:
                if response.status == 200:
                    async for chunk_bytes in response.content:
                        chunk_bytes = chunk_bytes.strip()
                        if not chunk_bytes:
                            continue
                        sse_data = chunk_bytes[6:] if chunk_bytes.startswith(b"data: ") else chunk_bytes
                        if sse_data == b"[DONE]":
                            continue
                        data = _loads(sse_data)
                        meta = data.get("meta_info") or meta
                        if "text" in data and data["text"] and ttft == 0.0:
                            ttft = time.perf_counter() - st
                else:
                    error = (response.reason or "") + ": " + (await response.text())
        except Exception as exc:  # bench_serving records any exception as the request's error
            error = f"{type(exc).__name__}: {exc}"
    return (ttft * 1e3 if ttft else None), meta, error, st


class RealBenchServing:
    """SGLang's own async_request_sglang_generate, run by bench_serving_worker.py under `python`."""

    def __init__(self, python: str, api_url: str) -> None:
        worker = Path(__file__).with_name("bench_serving_worker.py")
        self._proc = subprocess.Popen([python, str(worker), api_url], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        assert self._proc.stdout is not None
        ready = self._proc.stdout.readline()
        if not ready.startswith("ready"):
            raise RuntimeError(f"bench_serving worker did not start: {ready!r}")

    def burst(self, prompts: list[list[int]], output_len: int) -> list[Outcome]:
        """All prompts at once, as bench_serving sends them (one task each, gathered)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"prompts": prompts, "output_len": output_len}) + "\n")
        self._proc.stdin.flush()
        return [tuple(x) for x in json.loads(self._proc.stdout.readline())]  # type: ignore[misc]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
