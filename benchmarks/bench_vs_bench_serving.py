"""Benchmark (prints): our client next to SGLang's own bench_serving, on the same sim engine.

One burst of N concurrent streams of 1024 random ids sent as input_ids, 2 output tokens,
at N = 1 and 64; median TTFT seen by each client, and the server's own first_token_latency.

    bash tools/sglang_cpu_venv.sh /tmp/sgvenv          # bench_serving without a GPU
    python benchmarks/bench_vs_bench_serving.py --sglang-python /tmp/sgvenv/bin/python --tokenizer DIR
(DIR: a local HF tokenizer directory; bench_serving needs one even for random ids.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pytest_ppd.client.runner import _round
from pytest_ppd.client.stream import StreamClient
from pytest_ppd.client.workload import Workload
from pytest_ppd.grid import GridPoint
from pytest_ppd.servers.process import ServerProcess, free_port


async def ours(url: str, n: int, rounds: int) -> tuple[list[float], list[float]]:
    ttft, server = [], []
    async with StreamClient(url) as client:
        for r in range(rounds):
            wl = Workload(GridPoint(n, 0, 1024), 128256, seed=100 + r, path="bench")
            for res in await _round(client, wl, wl.point, 0, 2):
                ttft.append(res.ttft_ns / 1e6)
                server.append(res.meta_info.get("first_token_latency", float("nan")) * 1e3)
    return ttft, server


def theirs(python: str, port: int, tokenizer: str, n: int, rounds: int, out: Path) -> list[float]:
    meds = []
    for r in range(rounds):
        subprocess.run([python, "-m", "sglang.bench_serving", "--backend", "sglang", "--host", "127.0.0.1",
                        "--port", str(port), "--dataset-name", "random-ids", "--model", tokenizer,
                        "--tokenizer", tokenizer, "--num-prompts", str(n), "--random-input-len", "1024",
                        "--random-output-len", "2", "--random-range-ratio", "1.0", "--max-concurrency", str(n),
                        "--seed", str(r), "--tokenize-prompt", "--disable-tqdm", "--output-file", str(out)],
                       check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        meds.append(json.loads(out.read_text().splitlines()[-1])["median_ttft_ms"])
    return meds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sglang-python", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(
            "bench", [sys.executable, "-m", "pytest_ppd.sim", "--model-path", "Llama-3.1-8B", "--port", str(port),
                      "--enable-metrics"], health_url=f"http://127.0.0.1:{port}/health",
            log_path=Path(tmp) / "sim.log") as proc:
        proc.wait_ready(60)
        url = f"http://127.0.0.1:{port}"
        print(f"{'streams':>7} {'ours median TTFT':>17} {'server first_token':>19} "
              f"{'bench_serving median TTFT':>26}  (ms)")
        for n in (1, 64):
            ttft, server = asyncio.run(ours(url, n, args.rounds))
            bench = theirs(args.sglang_python, port, args.tokenizer, n, args.rounds, Path(tmp) / "bs.jsonl")
            print(f"{n:>7} {statistics.median(ttft):>17.2f} {statistics.median(server):>19.2f} "
                  f"{statistics.median(bench):>26.2f}")


if __name__ == "__main__":
    main()
