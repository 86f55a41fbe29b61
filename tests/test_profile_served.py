"""ppd profile over HTTP: the served sim started by the profile, and an engine the user runs (external)."""

from dataclasses import replace

import numpy as np
import pytest

from pytest_ppd.profile import ProfileDesign, read_cached, read_decode, read_prefill, run_profile
from pytest_ppd.servers.topology import TopologyConfig, start_topology

pytestmark = pytest.mark.slow
TINY = ProfileDesign(prefill_granularity=3, prefill_reps=2, decode_granularity=2, decode_osl=6,
                     decode_max_concurrency=4, cached_m=(32, 256), cached_L=(0, 1024), cached_reps=2)


def test_the_served_sim_is_profiled_with_every_request_proven(tmp_path):
    result = run_profile("Llama-3.1-8B", "H100-SXM", 1, tmp_path / "p", design=TINY, backend="sim",
                         context_length=4096, plots=False, command=["test"], workdir=tmp_path / "w")
    assert not result.invalid, result.invalid
    pre, dec, cached = read_prefill(tmp_path / "p"), read_decode(tmp_path / "p"), read_cached(tmp_path / "p")
    assert len(pre.isl) >= 3 and list(pre.ttft_ms) == sorted(pre.ttft_ms) and min(pre.ttft_ms) > 0
    assert len(dec.z_itl) >= 2 and all(x > 0 for x in dec.z_itl)
    assert np.isfinite(np.array(cached.ttft_ms)).all()
    assert "host perf_counter" in result.manifest["clock"] and "--enable-metrics" in result.manifest["engine"]["argv"]


def test_an_engine_the_user_runs_is_profiled_and_left_running(tmp_path):
    with start_topology(TopologyConfig(kind="colocated", context_length=4096), tmp_path / "w") as topo:
        result = run_profile("Llama-3.1-8B", "H100-SXM", 1, tmp_path / "p", design=replace(TINY, sweeps=("cached",)),
                             backend="external", url=topo.colocated, plots=False, command=["test"])
        assert not result.invalid and result.cached is not None
        assert result.cached.at(256, 1024) > 0 and result.engine.max_kv_tokens > 0
        assert not topo.dead()  # the profile did not stop what it did not start
