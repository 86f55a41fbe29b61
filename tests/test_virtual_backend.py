"""--ppd-backend=virtual through pytest: the default, deterministic, the same records and proofs."""

import json
from pathlib import Path

import pytest

from pytest_ppd.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent
SUITE = "def test_append(ppd_point, ppd_path, ppd_measure):\n    ppd_measure(ppd_point, ppd_path)\n"


def _latencies(path):
    return {(r["bs"], r["L"], r["m"], r["path"], r["round"]): (r["ttft_ms"], r["batch_latency_ms"])
            for r in RecordStore.read(path).rounds}


def test_virtual_is_the_default_and_the_header_says_why(pytester):
    result = pytester.runpytest("--collect-only", "--ppd-grid=bs=1;L=64;m=8")
    result.stdout.fnmatch_lines(["ppd: backend=virtual *",
                                 "ppd: backend virtual: the default: the modeled GPU's time*"])
    explicit = pytester.runpytest("--collect-only", "--ppd-backend=sim")
    explicit.stdout.fnmatch_lines(["ppd: backend sim: chosen with --ppd-backend*"])


def test_two_runs_of_one_grid_are_bit_identical(pytester):
    """Same grid and seed: every request's TTFT is the same float in both records files."""
    pytester.makepyfile(test_grid=SUITE)
    runs = []
    for name in ("a", "b"):
        result = pytester.runpytest_subprocess("--ppd-grid=bs=1,4;L=1024,4096;m=32,512", f"--ppd-results={name}")
        result.assert_outcomes(passed=16)
        runs.append(_latencies(pytester.path / name / "records.jsonl"))
    assert runs[0] == runs[1] and len(runs[0]) >= 48


def test_virtual_records_carry_the_proofs_and_the_engines_argv(pytester):
    pytester.makepyfile(test_grid=SUITE)
    res = pytester.path / "r"
    pytester.runpytest_subprocess("--ppd-grid=bs=2;L=512;m=16", f"--ppd-results={res}").assert_outcomes(passed=2)
    rounds = RecordStore.read(res / "records.jsonl").rounds
    assert rounds and all(r["backend"] == "virtual" and r["valid"] for r in rounds)
    assert all(r["cached_tokens"] == [512, 512] and r["prompt_tokens"] == [528, 528] for r in rounds)
    remote = next(r for r in rounds if r["path"] == "remote")
    modes = [a[a.index("--disaggregation-mode") + 1] for a in remote["server_argv"]]
    assert modes == ["prefill", "decode"] and all("--sim-gpu" in a for a in remote["server_argv"])
    # The modeled time, nothing else: the client's view equals the engine's own first_token_latency.
    assert all(abs(o) < 1e-9 for r in rounds for o in r["client_overhead_ms"])


def test_faults_need_served_engines(pytester):
    result = pytester.runpytest_subprocess("--ppd-sim-args=--sim-fault=crash@2")
    result.stderr.fnmatch_lines(["*--sim-fault needs served engines*add --ppd-backend=sim*"])
    assert result.ret != 0


def test_interference_is_measured_in_virtual_time(pytester):
    """Background decoders stall for about as long as the append's prefill: exactly, not host-dependent."""
    pytester.makepyfile(test_interference=(ROOT / "suites" / "test_interference.py").read_text())
    res = pytester.path / "r"
    result = pytester.runpytest_subprocess("--ppd-grid=bs=1,4;L=1024;m=512", f"--ppd-results={res}")
    result.assert_outcomes(passed=2)
    stored = [r for r in RecordStore.read(res / "records.jsonl").other if r.get("kind") == "interference"]
    assert len(stored) == 2
    for r in stored:
        assert r["p99_itl_before_ms"] < 10 < r["append_latency_ms"] <= r["p99_itl_during_ms"] + 10


@pytest.mark.slow
def test_the_full_grid_matches_the_committed_baseline_exactly(pytester):
    """Seed 000's 6x4x7 grid in virtual time: 143 feasible points valid on both paths, 25 infeasible
    skipped, and every point passes the gate of baselines/virtual-H100-SXM-Llama-3.1-8B.json at
    tolerance 1e-9: the latencies are the model's, the same on this machine as where it was recorded."""
    pytester.makepyfile(test_append_grid=(ROOT / "suites" / "test_append_grid.py").read_text())
    res = pytester.path / "r"
    baseline = ROOT / "baselines" / "virtual-H100-SXM-Llama-3.1-8B.json"
    result = pytester.runpytest_subprocess("--ppd-grid=full", f"--ppd-results={res}", f"--ppd-baseline={baseline}",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=286, skipped=50)
    saved = json.loads(baseline.read_text())
    assert saved["tolerance"] == 1e-9 and len(saved["points"]) == 286
