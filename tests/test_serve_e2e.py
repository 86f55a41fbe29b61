"""End to end: the sim behind the real sglang-router, as a user drives it."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from pytest_ppd.analysis.roofline import floor_ms
from pytest_ppd.servers.process import tagged_processes
from pytest_ppd.servers.topology import TopologyConfig, start_topology

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    with start_topology(TopologyConfig(kind="pd"), tmp_path_factory.mktemp("pd")) as topo:
        yield topo


def stream_generate(url, ids, max_new=2):
    """POST a streaming /generate on a fresh connection; returns (ttft_s, last meta_info, chunks)."""
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True}, "stream": True}
    chunks = []
    with httpx.Client(trust_env=False, timeout=60) as client:
        start = time.perf_counter()
        ttft = None
        with client.stream("POST", url + "/generate", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    chunks.append("[DONE]")
                    break
                ttft = ttft or time.perf_counter() - start
                chunks.append(json.loads(line[6:]))
    return ttft, chunks[-2]["meta_info"], chunks


def test_shared_prefix_is_cached_through_the_router(pd):
    """A second request sharing a 4096-token prefix reports cached_tokens == 4096 via P/D."""
    ctx = [(i * 7919) % 120000 + 1 for i in range(4096)]
    _, meta1, chunks = stream_generate(pd.router, ctx + [11] * 32)
    assert meta1["cached_tokens"] == 0 and meta1["prompt_tokens"] == 4128
    assert chunks[-1] == "[DONE]" and len(chunks[-2]["output_ids"]) == 2
    _, meta2, _ = stream_generate(pd.router, ctx + [13] * 32)
    assert meta2["cached_tokens"] == 4096
    assert meta2["finish_reason"] == {"type": "length", "length": 2}
    for key in ("queue_time", "first_token_latency", "request_received_ts", "forward_entry_time",
                "prefill_finished_time", "request_finished_ts", "e2e_latency"):
        assert key in meta2, key


def test_append_latency_grows_with_m_and_never_beats_the_floor(pd):
    """TTFT of an append over a cached context rises with m and stays above the physical floor."""
    ctx = [(i * 104729) % 120000 + 1 for i in range(2048)]
    stream_generate(pd.router, ctx + [3], max_new=1)  # warm the context
    ttfts = {}
    for k, m in enumerate((64, 1024, 4096)):
        ids = ctx + [(k * 1000 + j) % 120000 + 1 for j in range(m)]
        ttft, meta, _ = stream_generate(pd.router, ids, max_new=1)
        assert meta["cached_tokens"] == 2048
        assert ttft * 1e3 >= floor_ms("Llama-3.1-8B", "H100-SXM", 1, 2048, m)
        ttfts[m] = meta["first_token_latency"]  # server-side: no client or router hop in the comparison
    assert ttfts[64] < ttfts[1024] < ttfts[4096]


def test_colocated_topology_serves_and_reports_pool(tmp_path):
    with start_topology(TopologyConfig(kind="colocated"), tmp_path) as topo:
        info = httpx.get(topo.colocated + "/server_info", trust_env=False).json()
        assert info["max_total_num_tokens"] > 400_000  # Llama-3.1-8B on one 80 GB H100
        _, meta, _ = stream_generate(topo.colocated, [1, 2, 3])
        assert meta["prompt_tokens"] == 3


def _ppd(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "pytest_ppd.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_ppd_serve_prints_urls_and_sigterm_leaves_nothing(tmp_path):
    """`ppd serve` prints its JSON line when healthy; SIGTERM stops every process it started."""
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PPD_RUN_TOKEN": token}
    with _ppd("serve", "--port", str(_free_port()), "--workdir", str(tmp_path), env=env) as proc:
        try:
            urls = json.loads(proc.stdout.readline())
            assert set(urls) == {"router", "prefill", "decode", "colocated"}
            assert httpx.get(urls["router"] + "/readiness", trust_env=False).status_code == 200
            assert len(tagged_processes(token)) >= 5  # router + 2 engines + their guards
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while tagged_processes(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tagged_processes(token) == []


def _free_port():
    from pytest_ppd.servers.process import free_port

    return free_port()


def test_busy_port_is_one_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = _ppd("serve", "--port", str(port), "--workdir", str(tmp_path))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and f"port {port}" in err and "in use" in err


def test_child_dying_at_startup_reports_its_log(tmp_path, figures):
    """A bad --sim-* flag makes the engine exit: one error with the engine's own message."""
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    proc = _ppd("serve", "--topology", "colocated", "--port", str(_free_port()), "--workdir", str(tmp_path),
                "--sim-flag=--sim-gpu=TPU", env={**os.environ, "PPD_RUN_TOKEN": token})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "exited during start-up" in err and "unknown GPU 'TPU'" in err
    figures["processes left after a launch failure (bad flag)"] = len(tagged_processes(token))
    assert tagged_processes(token) == []


@pytest.mark.parametrize("args,needle", [
    (["--model", "gpt-5"], "unknown model"),
    (["--gpu", "TPU"], "unknown GPU"),
    (["--link", "smoke"], "unknown link"),
    (["--host", "0.0.0.0"], "--allow-remote-bind"),
])
def test_bad_serve_input_is_one_line(args, needle, tmp_path):
    proc = _ppd("serve", "--dry-run", "--workdir", str(tmp_path), *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_one_json_argv_per_process(tmp_path):
    proc = _ppd("serve", "--dry-run", "--workdir", str(tmp_path))
    out, _ = proc.communicate(timeout=30)
    argvs = [json.loads(line) for line in out.splitlines()]
    assert [a[2] for a in argvs] == ["pytest_ppd.sim", "pytest_ppd.sim", "sglang_router.launch_router"]
    router = argvs[2]
    assert router[router.index("--host") + 1] == "127.0.0.1" and "--disable-retries" in router
