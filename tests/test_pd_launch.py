"""What real SGLang P/D needs at launch, and the sim behaving the same way: transfer backend, installs,
readiness, flush with a timeout, decode reservations, one GPU shared, a broken P/D setup failing first."""

import asyncio
import json
import time

import httpx
import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.servers import topology
from pytest_ppd.servers.commands import resolve_transfer_backend
from pytest_ppd.servers.topology import TopologyConfig, start_topology
from pytest_ppd.sim.args import resolve
from pytest_ppd.sim.engine import SimRequest
from pytest_ppd.sim.server import SimServer
from tests.support import count_starts_conftest


def test_auto_transfer_backend_follows_the_rdma_devices(tmp_path):
    assert resolve_transfer_backend("auto", tmp_path / "missing") == "mooncake_tcp"
    (tmp_path / "ib").mkdir()
    assert resolve_transfer_backend("auto", tmp_path / "ib") == "mooncake_tcp"  # no device in it
    (tmp_path / "ib" / "mlx5_0").mkdir()
    assert resolve_transfer_backend("auto", tmp_path / "ib") == "mooncake"
    assert resolve_transfer_backend("nixl", tmp_path / "ib") == "nixl"
    with pytest.raises(ConfigError, match="not one of auto, mooncake, mooncake_tcp"):
        resolve_transfer_backend("rdma")


def test_sglang_pd_without_mooncake_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setattr(topology, "_module_available", lambda name: name != "mooncake")
    with pytest.raises(ConfigError, match=r"needs mooncake-transfer-engine.*pip install 'pytest-ppd\[sglang\]'"):
        TopologyConfig(backend="sglang", kind="pd", transfer_backend="mooncake_tcp").check_installed()
    TopologyConfig(backend="sglang", kind="pd", transfer_backend="nixl").check_installed()  # not mooncake: fine


def _server(argv_extra=()):
    return SimServer(resolve(["--model-path", "Llama-3.1-8B", *argv_extra]))


class _Query:
    def __init__(self, **query):
        self.query = {k: str(v) for k, v in query.items()}


def test_flush_waits_for_idle_with_a_timeout_and_refuses_without_one():
    """SGLang 0.5.23: POST /flush_cache refuses while anything runs; ?timeout=S waits up to S for idle."""
    server = _server()

    async def scenario():
        req = SimRequest("r", list(range(1000, 1100)), 1, 0.0)
        server.engine.add(req)
        busy = await server.flush_cache(_Query())
        timed_out = await server.flush_cache(_Query(timeout=0.05))

        async def finish_soon():
            await asyncio.sleep(0.05)
            server.engine.abort(req)
        task = asyncio.ensure_future(finish_soon())
        started = time.perf_counter()
        waited = await server.flush_cache(_Query(timeout=5))
        await task
        return busy, timed_out, waited, time.perf_counter() - started, await server.flush_cache(_Query(timeout=-1))

    busy, timed_out, waited, took, bad = asyncio.run(scenario())
    assert busy.status == 400 and "Cache not flushed" in busy.text
    assert timed_out.status == 400 and timed_out.text == "Timed out waiting for idle state."
    assert waited.status == 200 and "Cache flushed" in waited.text and 0.04 < took < 4
    assert bad.status == 422


@pytest.mark.slow
def test_served_engines_answer_ready_without_a_key_and_the_router_probes_it(tmp_path):
    cfg = TopologyConfig(kind="pd", api_key="k-secret")
    with start_topology(cfg, tmp_path) as topo:
        for url in topo.prefill + topo.decode:
            assert httpx.get(url + "/ready", trust_env=False).status_code == 200
            assert httpx.post(url + "/flush_cache?timeout=2", trust_env=False,
                              headers={"Authorization": "Bearer k-secret"}).status_code == 200
        router = next(p for p in topo.processes if p.name == "router")
        assert router.argv[router.argv.index("--health-check-endpoint") + 1] == "/ready"
        info = httpx.get(topo.decode[0] + "/server_info", trust_env=False,
                         headers={"Authorization": "Bearer k-secret"}).json()
        assert info["num_reserved_decode_tokens"] == 512 and info["disaggregation_transfer_backend"] in (
            "mooncake", "mooncake_tcp")


SUITE = "def test_append(ppd_point, ppd_path, ppd_measure):\n    ppd_measure(ppd_point, ppd_path)\n"


@pytest.mark.slow
def test_a_pd_topology_that_cannot_start_fails_first_and_is_not_retried(pytester):
    """A broken REMOTE setup fails in the first tests (REMOTE runs first), with the server's log tail,
    and is started once, not once per point; LOCAL points still run."""
    pytester.makepyfile(test_grid=SUITE)
    pytester.makeconftest(count_starts_conftest(
        'if self.name == "decode":\n    self.argv = self.argv + ["--sim-link", "no-such-link"]'))
    result = pytester.runpytest_subprocess("--ppd-backend=sim", "--ppd-grid=bs=1;L=256;m=16,32",
                                           f"--ppd-results={pytester.path / 'r'}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    lines = [ln for ln in result.stdout.lines if ln.startswith("FAILED")]
    assert all("remote" in ln for ln in lines)
    result.stdout.fnmatch_lines(["*decode exited during start-up*"])
    starts = json.loads((pytester.path / "starts.json").read_text())
    assert starts.count("decode") == 1 and starts.count("colocated") == 1
