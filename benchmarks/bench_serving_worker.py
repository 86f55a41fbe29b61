"""Runs SGLang 0.5.23's own `async_request_sglang_generate` for bench_vs_bench_serving.py (reference_clients.py).

Under an interpreter with SGLang installed (tools/sglang_cpu_venv.sh builds one without a GPU):

    python benchmarks/bench_serving_worker.py http://127.0.0.1:PORT/generate
stdin: one JSON line per burst {"prompts": [[ids...], ...], "output_len": N};
stdout: one JSON line per burst [[ttft_ms or null, meta_info, error or null, start perf_counter s], ...].
The only hook: `_record_server_prompt_len`, which the function calls with every decoded chunk, also keeps
the chunk's meta_info (the server's first_token_latency) on the request's output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from sglang.benchmark import serving


def _install(api_url: str) -> None:
    serving.args = argparse.Namespace(  # bench_serving's defaults for what the request function reads
        temperature=0.0, top_p=1.0, disable_ignore_eos=False, disable_stream=False, return_logprob=False,
        return_routed_experts=False, logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None,
        header=None, cache_report=False)
    record = serving._record_server_prompt_len

    def keep_meta(data: dict, output: object) -> None:
        record(data, output)
        output.ppd_meta = data.get("meta_info") or getattr(output, "ppd_meta", {})  # type: ignore[attr-defined]

    serving._record_server_prompt_len = keep_meta


async def _burst(api_url: str, prompts: list[list[int]], output_len: int) -> list[list[object]]:
    inputs = [serving.RequestFuncInput(prompt=p, api_url=api_url, prompt_len=len(p), output_len=output_len,
                                       model="", lora_name=None, image_data=None, extra_request_body={})
              for p in prompts]
    tasks = [asyncio.create_task(serving.async_request_sglang_generate(i)) for i in inputs]
    outs = await asyncio.gather(*tasks)
    return [[o.ttft * 1e3 if o.success and o.ttft else None, getattr(o, "ppd_meta", {}),
             None if o.success else (o.error or "failed")[-300:], o.start_time] for o in outs]


def main() -> None:
    api_url = sys.argv[1]
    _install(api_url)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(asyncio.run(_burst(api_url, req["prompts"], req["output_len"]))), flush=True)


if __name__ == "__main__":
    main()
