"""Benchmark (prints): what each client adds to a TTFT, on one served sim run.

added TTFT = the client's TTFT - the serving engine's own first_token_latency (meta_info, --enable-metrics),
per request; median and P90 at 1 and 64 concurrent streams of 1024 fresh random ids sent as input_ids,
2 output tokens. It splits in two at the engine's request_received_ts (same host, same clocks):
"to engine" = from the client's start stamp until the engine took the request (connecting, the client's
own work, the router, the engine's HTTP front end queueing a burst) and "back" = from the engine's first
token until the client's stamp of it (the response path and the client's reading). The clients take
turns burst by burst on the same topology:

* ppd before:    our streaming client before the lean reader (reference_clients.OldStreamClient)
* ppd lean:      pytest_ppd.client.stream.StreamClient, one for the run, bodies encoded and n connections
                 opened (prepare(n)) before the start barrier; the runner's rounds get the same from the
                 client's own top-up at the end of each burst
* ppd lean cold: a new StreamClient per burst: each stream connects after the barrier (sent_ns still
                 stamped after the connection is up); the runner's first round of a point without warm-up
* bench_serving: SGLang 0.5.23's async_request_sglang_generate, redone (reference_clients.py)
* bench_serving (SGLang's code): the function itself, with --sglang-python (a venv with SGLang 0.5.23:
                 bash tools/sglang_cpu_venv.sh /tmp/sgvenv)

The engines run in text mode so that bench_serving, which times the first chunk with non-empty text,
sees tokens; every client gets its own prompts (nothing is a cache hit).

    python benchmarks/bench_vs_bench_serving.py [--topology pd|colocated] [--rounds 5] [--sglang-python PY]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from reference_clients import (OldStreamClient, Outcome, RealBenchServing, bench_serving_generate, body_of,
                               outcome)

from pytest_ppd.client.stream import StreamClient
from pytest_ppd.client.workload import Workload
from pytest_ppd.grid import GridPoint
from pytest_ppd.servers.topology import TopologyConfig, start_topology

STREAMS = (1, 64)
OUTPUT_LEN, PROMPT_LEN, VOCAB = 2, 1024, 128256
Burst = Callable[[list[list[int]]], Awaitable[list[Outcome]]]


def prompts(client: int, n: int, round_: int) -> list[list[int]]:
    wl = Workload(GridPoint(n, 0, PROMPT_LEN), VOCAB, seed=100_000 * client + 1000 * n + round_, path="bench")
    return [wl.prompt(c, 0) for c in range(n)]


async def gated(sends: list[Callable[[], Awaitable[Outcome]]]) -> list[Outcome]:
    """The runner's start barrier: every stream parked at a gate, then released together."""
    gate = asyncio.Event()

    async def one(send: Callable[[], Awaitable[Outcome]]) -> Outcome:
        await gate.wait()
        return await send()

    tasks = [asyncio.ensure_future(one(s)) for s in sends]
    await asyncio.sleep(0)
    gate.set()
    return list(await asyncio.gather(*tasks))


def ours(client: StreamClient | OldStreamClient, prepare: bool = False) -> Burst:
    async def burst(ps: list[list[int]]) -> list[Outcome]:
        bodies = [body_of(p, OUTPUT_LEN) for p in ps]
        if prepare:
            assert isinstance(client, StreamClient)
            await client.prepare(len(ps))

        def sender(body: bytes) -> Callable[[], Awaitable[Outcome]]:
            async def send() -> Outcome:
                return outcome(await client.send(body))
            return send

        return await gated([sender(b) for b in bodies])
    return burst


def cold(url: str) -> Burst:
    async def burst(ps: list[list[int]]) -> list[Outcome]:
        async with StreamClient(url) as client:
            return await ours(client)(ps)
    return burst


def bench_serving(api_url: str) -> Burst:
    async def burst(ps: list[list[int]]) -> list[Outcome]:  # bench_serving: a task per request, gathered
        tasks = [asyncio.create_task(bench_serving_generate(api_url, p, OUTPUT_LEN)) for p in ps]
        return list(await asyncio.gather(*tasks))
    return burst


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run(url: str, rounds: int, min_samples: int, real: RealBenchServing | None) -> dict[tuple[str, int], list]:
    old, lean = OldStreamClient(url), StreamClient(url)
    clients: dict[str, Burst] = {"ppd before": ours(old), "ppd lean": ours(lean, prepare=True),
                                 "ppd lean cold": cold(url), "bench_serving": bench_serving(url + "/generate")}
    if real is not None:
        clients["bench_serving (SGLang's code)"] = lambda ps: asyncio.to_thread(real.burst, ps, OUTPUT_LEN)
    out: dict[tuple[str, int], list] = {}
    try:
        for n in STREAMS:
            for i, burst in enumerate(clients.values()):
                await burst(prompts(i, n, 10_000))  # warm-up, as bench_serving does; not counted
            for r in range(max(rounds, math.ceil(min_samples / n))):
                for i, (name, burst) in enumerate(clients.items()):
                    out.setdefault((name, n), []).extend(await burst(prompts(i, n, r)))
    finally:
        await old.aclose()
        await lean.__aexit__(None, None, None)
    return out


def table(out: dict[tuple[str, int], list]) -> list[str]:
    lines = [f"{'streams':>7}  {'client':<30} {'n':>5} {'errors':>6} {'TTFT med':>9} {'server FTL med':>14} "
             f"{'added med':>9} {'added P90':>9} {'to engine med':>13} {'back med':>8}   (ms)"]
    unix_minus_perf = time.time() - time.perf_counter()
    for (name, n), rows in sorted(out.items(), key=lambda kv: kv[0][1]):
        ok = [(t, m["first_token_latency"] * 1e3, (m.get("request_received_ts", math.nan) - unix_minus_perf - st) * 1e3)
              for t, m, e, st in rows if e is None and t is not None and "first_token_latency" in m]
        if not ok:
            lines.append(f"{n:>7}  {name:<30} {len(rows):>5} {len(rows):>6}  (no request measured)")
            continue
        added = [t - s for t, s, _ in ok]
        lines.append(f"{n:>7}  {name:<30} {len(rows):>5} {len(rows) - len(ok):>6} "
                     f"{statistics.median(t for t, _, _ in ok):>9.2f} {statistics.median(s for _, s, _ in ok):>14.2f} "
                     f"{statistics.median(added):>9.2f} {pct(added, 0.9):>9.2f} "
                     f"{statistics.median(x for _, _, x in ok):>13.2f} "
                     f"{statistics.median(t - s - x for t, s, x in ok):>8.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topology", choices=("pd", "colocated"), default="pd")
    ap.add_argument("--rounds", type=int, default=5, help="bursts per client and stream count (default 5)")
    ap.add_argument("--min-samples", type=int, default=100,
                    help="more bursts at 1 stream until this many requests (default 100)")
    ap.add_argument("--sglang-python", default=None,
                    help="an interpreter with SGLang 0.5.23: also run its own request function (default: not)")
    args = ap.parse_args()
    cfg = TopologyConfig(kind=args.topology, text=True)
    with tempfile.TemporaryDirectory() as tmp, start_topology(cfg, Path(tmp)) as topo:
        url = topo.entry_url
        real = RealBenchServing(args.sglang_python, url + "/generate") if args.sglang_python else None
        try:
            out = asyncio.run(run(url, args.rounds, args.min_samples, real))
        finally:
            if real is not None:
                real.close()
    print(f"topology {args.topology} (sim, text mode); added = client TTFT - server first_token_latency")
    if real is None:
        print("bench_serving (SGLang's code): not run (no --sglang-python); bench_serving = its method, redone")
    print("\n".join(table(out)))


if __name__ == "__main__":
    main()
