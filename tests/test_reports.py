"""Reports from records alone, `ppd compare`, and pytest-benchmark interop."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One small sim run (both paths) with a baseline and a pytest-benchmark export."""
    tmp = tmp_path_factory.mktemp("run")
    res = tmp / "res"
    out = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "suites" / "test_append_grid.py"),
                          "--ppd-grid=bs=1,2;L=256;m=16,64", f"--ppd-results={res}",
                          f"--ppd-save-baseline={tmp / 'base.json'}", f"--ppd-benchmark-json={tmp / 'bench.json'}",
                          "--benchmark-disable", "-p", "no:cacheprovider", "-q"],
                         capture_output=True, text=True, timeout=300, cwd=tmp)
    assert out.returncode == 0, out.stdout[-2000:]
    return tmp


def test_report_rebuilds_every_output_from_records(run_dir, tmp_path):
    res = tmp_path / "copy"
    res.mkdir()
    (res / "records.jsonl").write_bytes((run_dir / "res" / "records.jsonl").read_bytes())
    out = subprocess.run([sys.executable, "-m", "pytest_ppd.cli", "report", str(res)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("results.json", "summary.csv", "report.md", "latency_vs_m.png", "regime_map.png", "routing_map.png",
                 "local_vs_remote.png"):
        assert (res / name).stat().st_size > 0, name
    results = json.loads((res / "results.json").read_text())
    assert results["summary"]["total_tests"] == 8 and {"test_case", "metrics"} <= set(results["results"][0])
    header = (res / "summary.csv").read_text().splitlines()[0]
    assert header == "bs,L,m,path,n_valid,n_invalid,median_ms,p10_ms,p90_ms,regime,route"
    md = (res / "report.md").read_text()
    for section in ("## Regime map [local]", "physical floor", "## Scaling exponents", "## Routing",
                    "## Invalid rounds"):
        assert section in md
    assert (res / "latency_vs_m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_passes_on_itself_and_fails_on_a_regression(run_dir, tmp_path):
    cli = [sys.executable, "-m", "pytest_ppd.cli", "compare", str(run_dir / "res")]
    same = subprocess.run(cli + [str(run_dir / "base.json")], capture_output=True, text=True)
    assert same.returncode == 0 and "0 regression(s)" in same.stdout
    base = json.loads((run_dir / "base.json").read_text())
    point = base["points"]["bs2-L256-m64-local"]
    point["samples_ms"] = [x / 1.5 for x in point["samples_ms"]]  # the baseline was 1.5x faster
    point["median_ms"] /= 1.5
    doctored = tmp_path / "fast.json"
    doctored.write_text(json.dumps(base))
    worse = subprocess.run(cli + [str(doctored)], capture_output=True, text=True)
    assert worse.returncode == 1
    assert "REGRESSION bs2-L256-m64-local regressed" in worse.stdout


def test_pytest_benchmark_compare_reads_the_export(run_dir):
    doc = json.loads((run_dir / "bench.json").read_text())
    assert len(doc["benchmarks"]) == 8 and doc["benchmarks"][0]["stats"]["rounds"] >= 3
    exe = Path(sys.executable).with_name("pytest-benchmark")
    out = subprocess.run([str(exe), "compare", str(run_dir / "bench.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "test_append[bs1-L256-m16-local]" in out.stdout


def test_benchmark_only_is_refused_not_silently_skipping(pytester):
    pytester.makepyfile(test_grid="def test_append(ppd_point, ppd_path, ppd_measure):\n    pass\n")
    result = pytester.runpytest_subprocess("--benchmark-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --benchmark-only would skip every pytest-ppd measurement*"])
