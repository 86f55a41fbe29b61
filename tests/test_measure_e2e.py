"""Measurements end to end: proven rounds, flagged mistakes, crash-safe records on the served sim;
the physics of the analysis (regimes, routes) in virtual time."""

import json
from pathlib import Path
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import httpx
import pytest

from pytest_ppd.client import workload as workload_mod
from pytest_ppd.client.runner import Settings, Target, measure_point
from pytest_ppd.grid import GridPoint
from pytest_ppd.records import RecordStore
from pytest_ppd.servers.process import tagged_processes
from pytest_ppd.servers.topology import TopologyConfig, start_topology
from pytest_ppd.specs import GpuSpec, gpu_spec, model_spec
from tests.support import count_starts_conftest

pytestmark = pytest.mark.slow
MODEL, GPU = model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with start_topology(TopologyConfig(kind="colocated"), tmp_path_factory.mktemp("colo")) as topo:
        info = httpx.get(topo.colocated + "/server_info", trust_env=False).json()
        yield Target("local", topo.colocated, (topo.colocated,), pool_tokens=info["max_total_num_tokens"])


def _store(tmp_path):
    return RecordStore(tmp_path / "res", run_id="t", config_hash="h")


def test_rounds_are_valid_with_cache_proof(local, tmp_path):
    """Every request reports cached_tokens == L and prompt_tokens == L + m; no append repeats."""
    point = GridPoint(4, 1024, 64)
    out = measure_point(local, point, Settings("t", "sim", MODEL, GPU, min_reps=3, max_reps=4), _store(tmp_path))
    assert out.records and not out.invalid
    for rec in out.records:
        assert rec["cached_tokens"] == [1024] * 4 and rec["prompt_tokens"] == [1088] * 4
        assert rec["batch_latency_ms"] >= rec["floor_ms"]
    wl = workload_mod.Workload(point, MODEL.vocab_size, 0, "local")
    appends = [tuple(wl.append(c, r)) for c in range(4) for r in range(len(out.records))]
    assert len(set(appends)) == len(appends)


def test_repeated_prompts_are_flagged_invalid(local, tmp_path, monkeypatch):
    """Seed 000's mistake: the same append every round hits the cache and is never reported."""
    original = workload_mod.Workload.append
    monkeypatch.setattr(workload_mod.Workload, "append", lambda self, conv, round_: original(self, conv, 0))
    out = measure_point(local, GridPoint(2, 512, 256), Settings("t", "sim", MODEL, GPU, min_reps=3, max_reps=4),
                        _store(tmp_path))
    assert out.records[0]["valid"]
    later = out.records[1:]
    assert later and all(not r["valid"] for r in later)
    assert any("served from cache" in reason for reason in later[0]["invalid_reasons"])
    assert out.summary.n == 1  # only the proven round counts


def test_cache_busting_is_flagged_invalid(local, tmp_path, monkeypatch):
    """A context that differs between warm-up and append was recomputed: invalid."""
    calls = Counter()
    original = workload_mod.Workload.context_json

    def drifting(self, conv):
        calls[conv] += 1
        return original(self, conv + 1000 * calls[conv])

    monkeypatch.setattr(workload_mod.Workload, "context_json", drifting)
    out = measure_point(local, GridPoint(2, 512, 32), Settings("t", "sim", MODEL, GPU, min_reps=3, max_reps=3),
                        _store(tmp_path))
    assert not out.valid and out.summary is None
    assert all(any("not cached" in r for r in rec["invalid_reasons"]) for rec in out.records)


def test_round_faster_than_the_floor_is_invalid(local, tmp_path):
    """Against a GPU 1000x slower than the sim's, every round beats the floor: physically impossible."""
    slow = GpuSpec("slow", GPU.peak_flops / 1000, GPU.hbm_bytes_per_s / 1000, GPU.memory_bytes)
    out = measure_point(local, GridPoint(1, 512, 64), Settings("t", "sim", MODEL, slow, min_reps=3, max_reps=3),
                        _store(tmp_path))
    assert not out.valid
    assert all(any("below physical floor" in r for r in rec["invalid_reasons"]) for rec in out.records)


SUITE = "def test_append(ppd_point, ppd_path, ppd_measure):\n    ppd_measure(ppd_point, ppd_path)\n"


def _rounds(path):
    return RecordStore.read(path).rounds


def test_smoke_run_through_pytest_writes_valid_records(pytester):
    pytester.makepyfile(test_grid=SUITE)
    res = pytester.path / "res"
    result = pytester.runpytest_subprocess("--ppd-backend=sim", "--ppd-grid=bs=1,2;L=256;m=16", f"--ppd-results={res}",
                                           "--ppd-max-reps=4", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*pytest-ppd summary*", "bs2-L256-m16*remote*", f"records: {res}/records.jsonl"])
    rounds = _rounds(res / "records.jsonl")
    assert {r["path"] for r in rounds} == {"local", "remote"}
    assert all(r["valid"] and r["cached_tokens"] == [256] * r["bs"] for r in rounds)
    assert all(r["server_argv"] and r["versions"]["sglang_router"] == "0.3.2" for r in rounds)


def test_capacity_infeasible_points_are_reported_not_run(pytester):
    """With a 2048-token pool, BS=4 x (L=1024 + m) cannot stay cached: the point is reported infeasible."""
    pytester.makepyfile(test_grid="""
from pytest_ppd.grid import GridPoint
def test_big(ppd_measure, ppd_session, monkeypatch):
    import pytest_ppd.session as s
    ppd_measure(GridPoint(4, 1024, 32), "local")
""")
    pytester.makeconftest("""
import pytest
from pytest_ppd.servers import topology
_orig = topology.TopologyConfig.__init__
def _small(self, *a, **kw):
    _orig(self, *a, **{**kw, "max_total_tokens": 2048})
topology.TopologyConfig.__init__ = _small
""")
    result = pytester.runpytest_subprocess(f"--ppd-results={pytester.path / 'r'}", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*infeasible: bs4-L1024-m32: BS*(L+m) = 4224 tokens > *max_total_num_tokens = 2048*"])


def test_kill_9_then_resume_loses_and_duplicates_nothing(pytester, figures):
    """kill -9 mid-grid: servers die with it; --ppd-resume completes the grid, no round lost or repeated."""
    pytester.makepyfile(test_grid=SUITE)
    res = pytester.path / "res"
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PPD_RUN_TOKEN": token}
    args = [sys.executable, "-m", "pytest", "test_grid.py", "--ppd-backend=sim", "--ppd-grid=bs=1,2;L=512;m=16,128",
            f"--ppd-results={res}", "--ppd-reps=3", "--ppd-max-reps=6", "-p", "no:cacheprovider", "-q"]
    proc = subprocess.Popen(args, cwd=pytester.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = res / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if records.exists() and len(_rounds(records)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    before = records.read_bytes()
    lines_before = [ln for ln in before.split(b"\n")[:-1]]
    deadline = time.monotonic() + 10
    while tagged_processes(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    figures["processes left 10 s after SIGKILL of pytest mid-grid"] = len(tagged_processes(token))
    assert tagged_processes(token) == [], "servers outlived a kill -9 of pytest"
    resumed = subprocess.run(args + ["--ppd-resume"], cwd=pytester.path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    after = records.read_bytes()
    complete_before = before[: before.rfind(b"\n") + 1]
    assert after.startswith(complete_before), "a round written before the kill was lost or rewritten"
    rounds = _rounds(records)
    keys = Counter((r["bs"], r["L"], r["m"], r["path"], r["round"]) for r in rounds)
    assert max(keys.values()) == 1, "duplicate round after resume"
    done = {(d["bs"], d["L"], d["m"], d["path"]) for d in RecordStore.read(records).done}
    assert len(done) == 8
    assert len(lines_before) >= 5
    assert tagged_processes(token) == []


def test_repeated_prompt_run_fails_the_test_with_reasons(pytester):
    """Through pytest: a run whose appends repeat cannot reach --ppd-reps valid rounds and fails, saying why."""
    pytester.makepyfile(test_grid=SUITE)
    pytester.makeconftest("""
from pytest_ppd.client import workload
_orig = workload.Workload.append
workload.Workload.append = lambda self, conv, round_: _orig(self, conv, 0)
""")
    result = pytester.runpytest_subprocess("--ppd-backend=sim", "--ppd-grid=bs=1;L=256;m=64",
                                           f"--ppd-results={pytester.path / 'r'}",
                                           "-k", "local", "--ppd-max-reps=4")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*bs1-L256-m64-local: 1 of 4 rounds valid, --ppd-reps needs 3*",
                                 "*cached_tokens=* > L=256: part of the append was served from cache*"])


def test_a_changed_expectation_fails_with_expected_vs_measured(pytester):
    """The analysis suite passes on the virtual sim's expectations (physics: virtual time) and fails, with
    the evidence, when one is changed."""
    suites = Path(__file__).resolve().parent.parent / "suites"
    pytester.makepyfile(test_analysis=(suites / "test_analysis.py").read_text())
    exp = pytester.mkdir("expectations")
    original = (suites / "expectations" / "virtual-H100-SXM-Llama-3.1-8B.toml").read_text()
    (exp / "virtual-H100-SXM-Llama-3.1-8B.toml").write_text(original)
    args = ["--ppd-grid=bs=1,8;L=1024;m=16,32,2048", f"--ppd-results={pytester.path / 'r1'}", "--ppd-max-reps=4"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=4, skipped=1)  # the baseline gate skips without --ppd-baseline
    result.stdout.fnmatch_lines(["*regime map [[]local[]]*", "*scaling exponents*", "*routing policies on grid*"])
    changed = original.replace('when = "bs * m <= 64"\nregime = "overhead"',
                               'when = "bs * m <= 64"\nregime = "compute"')
    assert changed != original
    (exp / "virtual-H100-SXM-Llama-3.1-8B.toml").write_text(changed)
    args[1] = f"--ppd-results={pytester.path / 'r2'}"
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*bs1-L1024 m 16->32 [[]local[]]: expected compute (bs * m <= 64), measured * "
                                 "with elasticity *, 95% CI *..* ms over * valid rounds; records: *records.jsonl)*"])


def test_heterogeneous_pd_gives_the_router_a_boundary_to_find(pytester):
    """P on a B200 (--ppd-prefill-gpu), D on an H100: the faster route now depends on BS, L and m
    together; the suites pass against the -prefill-B200 expectations (route regions, and a router
    regret below every fixed rule's), REMOTE rounds carry P's GPU and its floor."""
    suites = Path(__file__).resolve().parent.parent / "suites"
    pytester.makepyfile(test_append_grid=(suites / "test_append_grid.py").read_text(),
                        test_analysis=(suites / "test_analysis.py").read_text())
    exp = pytester.mkdir("expectations")
    name = "virtual-H100-SXM-Llama-3.1-8B-prefill-B200.toml"
    (exp / name).write_text((suites / "expectations" / name).read_text())
    results = pytester.path / "r"
    result = pytester.runpytest_subprocess("--ppd-grid=bs=1,8;L=1024,4096;m=32,512,2048", "--ppd-prefill-gpu=B200",
                                           f"--ppd-results={results}", "--ppd-max-reps=5")
    result.assert_outcomes(passed=28, skipped=1)
    result.stdout.fnmatch_lines(["ppd: backend=virtual model=Llama-3.1-8B gpu=H100-SXM prefill_gpu=B200 *",
                                 "routing policies on grid*", "  append-router *"])
    rounds = RecordStore.read(results / "records.jsonl").rounds
    remote = [r for r in rounds if r.get("path") == "remote"]
    assert remote and all(r["prefill_gpu"] == "B200" for r in remote)
    assert all("prefill_gpu" not in r for r in rounds if r.get("path") == "local")
    assert {r["oracle"] for r in _truth(rounds)} == {"local", "remote"}


def _truth(rounds):
    from pytest_ppd.analysis.study import analyze

    return [r._asdict() for r in analyze(rounds, "Llama-3.1-8B", "H100-SXM").truth.itertuples()]


def test_contexts_survive_kv_pressure_between_rounds(tmp_path):
    """Near a full pool, old appends could push contexts out (LRU; seen on the full grid's REMOTE path at
    BS=32, L=4096, m=8192): contexts are re-warmed before each round and every round stays proven."""
    from pytest_ppd.client.runner import _under_pressure

    point = GridPoint(8, 4096, 2048)  # 49k tokens in a 60k pool; two rounds' appends would not fit
    assert _under_pressure(point, 60000) and not _under_pressure(point, 600000)
    settings = Settings("t", "sim", MODEL, GPU, min_reps=4, max_reps=4)
    cfg = TopologyConfig(kind="colocated", max_total_tokens=60000, engine_args=("--chunked-prefill-size", "2048"))
    with start_topology(cfg, tmp_path / "s") as topo:
        target = Target("local", topo.colocated, (topo.colocated,), pool_tokens=60000)
        out = measure_point(target, point, settings, RecordStore(tmp_path / "a", run_id="t", config_hash="h"))
    assert len(out.valid) == 4


def test_infeasible_points_start_each_topology_once(pytester):
    """4 of 8 point-paths cannot fit the KV pool: each topology still starts once (served sim), the
    analysis and the terminal summary never relaunch servers, and the infeasible ones are skipped."""
    suites = Path(__file__).resolve().parent.parent / "suites"
    pytester.makepyfile(test_append_grid=(suites / "test_append_grid.py").read_text(),
                        test_analysis=(suites / "test_analysis.py").read_text())
    pytester.makeconftest(count_starts_conftest())
    result = pytester.runpytest_subprocess("--ppd-backend=sim", "--ppd-grid=bs=1,64;L=16384;m=16,32",
                                           f"--ppd-results={pytester.path / 'r'}", "--ppd-max-reps=3", "-rs")
    result.stdout.fnmatch_lines(["*infeasible: bs64-L16384-m16: BS*(L+m) = *"])
    assert json.loads((pytester.path / "starts.json").read_text()) == ["prefill", "decode", "router", "colocated"]
