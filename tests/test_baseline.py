"""The regression gate: a slowed point fails with the evidence; noise fails nothing; flips are caught."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_ppd import baseline as bl
from pytest_ppd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GRID = "--ppd-grid=bs=1,4;L=1024;m=32,2048"


def _base(samples, tol=0.1):
    return {"schema": 1, "kind": "pytest-ppd-baseline", "backend": "sim", "gpu": "H100-SXM",
            "model": "Llama-3.1-8B", "tolerance": tol, "points": {"p": {
                "n": len(samples), "median_ms": sorted(samples)[len(samples) // 2], "ci_low_ms": min(samples),
                "ci_high_ms": max(samples), "samples_ms": samples}}}


def test_a_20_percent_slowdown_regresses_and_noise_does_not():
    base = _base([100.0, 101.0, 99.0, 100.5, 99.5])
    assert bl.compare_point(base, "p", [120.0, 121.0, 119.0, 120.5, 119.5]).kind == "regression"
    assert bl.compare_point(base, "p", [101.0, 99.0, 102.0, 100.0, 98.5]).kind == "unchanged"
    assert bl.compare_point(base, "p", [80.0, 81.0, 79.5, 80.5, 79.0]).kind == "improvement"
    assert bl.compare_point(base, "missing", [1.0]) is None


def test_a_slowdown_within_tolerance_or_lost_in_noise_is_not_a_regression():
    base = _base([100.0, 130.0, 80.0])
    assert bl.compare_point(base, "p", [112.0, 140.0, 95.0]).kind == "unchanged"  # noisy: not significant
    quiet = _base([100.0, 100.5, 99.5])
    assert bl.compare_point(quiet, "p", [108.0, 108.5, 107.5]).kind == "unchanged"  # within 10%


@pytest.mark.parametrize("content,needle", [
    ("{not json", "is not a baseline file"),
    ('{"kind": "something-else"}', "is not a pytest-ppd baseline"),
    ('{"kind": "pytest-ppd-baseline", "schema": 99, "backend": "sim", "gpu": "g", "model": "m", "points": {}}',
     "newer than this pytest-ppd reads"),
])
def test_broken_or_newer_baselines_are_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        bl.load(path)


def test_a_baseline_from_another_gpu_is_refused():
    with pytest.raises(ConfigError, match="gpu='H200'"):
        bl.check_identity(_base([1.0]) | {"gpu": "H200"},
                          {"backend": "sim", "gpu": "H100-SXM", "model": "Llama-3.1-8B"})


def test_gate_tolerances_come_from_the_expectations_file(tmp_path):
    from pytest_ppd.expectations import load

    path = tmp_path / "sim-H100-SXM-Llama-3.1-8B.toml"
    path.write_text('[baseline]\ntolerance = 0.25\nexponent_tolerance = 0.2\npoints = { "p" = 0.05 }\n')
    gate = load(path).gate
    assert (gate.tolerance_for("p"), gate.tolerance_for("q"), gate.exponent_tolerance) == (0.05, 0.25, 0.2)
    quiet = _base([100.0, 100.5, 99.5])
    assert bl.compare_point(quiet, "p", [108.0, 108.5, 107.5], gate.tolerance_for("p")).kind == "regression"


@pytest.mark.parametrize("section,needle", [
    ("tolerance = -0.1", "baseline.tolerance must be a number in [0, 10)"),
    ('tolerance = "10%"', "baseline.tolerance must be a number"),
    ("exponent_tolerance = true", "baseline.exponent_tolerance must be a number"),
    ("tolerence = 0.1", "unknown [baseline] key(s) ['tolerence']"),
    ('points = { "p" = 99 }', "baseline.points.p must be a number"),
])
def test_bad_gate_settings_are_one_clear_error(tmp_path, section, needle):
    from pytest_ppd.expectations import load

    path = tmp_path / "e.toml"
    path.write_text(f"[baseline]\n{section}\n")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load(path)


def test_an_exponent_move_counts_only_beyond_its_tolerance():
    import pandas as pd

    base = _base([1.0]) | {"rows": {"local/bs8/L4096": {"exponent": 0.46, "ci_low": 0.40, "ci_high": 0.50}}}
    study = SimpleNamespace(cells=pd.DataFrame(columns=["path", "bs", "L", "m", "regime", "elasticity"]),
                            fits=pd.DataFrame([{"path": "local", "bs": 8, "L": 4096, "exponent": 0.60,
                                                "ci_low": 0.58, "ci_high": 0.62}]),
                            truth=pd.DataFrame())
    assert [f.kind for f in bl.compare_study(base, study)] == ["regression"]
    assert bl.compare_study(base, study, exponent_tolerance=0.2) == []


def test_gate_end_to_end_in_virtual_time(pytester):
    """Virtual time: a saved baseline (tolerance 1e-9); an unmodified rerun fails nothing; a uniform 2%
    slowdown fails every point, naming it; the engine slowed 20% at prompt length 3072 (the m=2048
    points) fails exactly those; a flipped route is caught."""
    pytester.makepyfile(test_append_grid=(ROOT / "suites" / "test_append_grid.py").read_text(),
                        test_analysis=(ROOT / "suites" / "test_analysis.py").read_text())
    shutil.copytree(ROOT / "suites" / "expectations", pytester.path / "expectations")
    base = pytester.path / "baseline.json"
    common = ["--ppd-backend=virtual", GRID, "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*common, f"--ppd-results={pytester.path / 'r0'}",
                                          f"--ppd-save-baseline={base}")
    first.assert_outcomes(passed=12, skipped=1)
    saved = json.loads(base.read_text())
    assert len(saved["points"]) == 8 and saved["routes"] and saved["rows"]
    assert saved["backend"] == "virtual" and saved["tolerance"] == bl.VIRTUAL_TOLERANCE
    again = pytester.runpytest_subprocess(*common, f"--ppd-results={pytester.path / 'r1'}", f"--ppd-baseline={base}")
    again.assert_outcomes(passed=13)
    slower = pytester.runpytest_subprocess(*common, f"--ppd-results={pytester.path / 'r2'}", f"--ppd-baseline={base}",
                                           "--ppd-sim-args=--sim-slowdown=1.02", "-k", "test_append")
    slower.assert_outcomes(failed=8)
    slower.stdout.fnmatch_lines(["*bs1-L1024-m32-local regressed: median * ms (+*%; baseline 95% CI *); "
                                 "tolerance 1e-09; p=0 < 0.0063 (0.05 Bonferroni-corrected over 8 points)*"])
    slowed = pytester.runpytest_subprocess(*common, f"--ppd-results={pytester.path / 'r3'}", f"--ppd-baseline={base}",
                                           "--ppd-sim-args=--sim-slow-prompt=3072:1.2", "-k", "test_append")
    slowed.assert_outcomes(passed=4, failed=4)
    failed = {line.split("[")[1].split("]")[0] for line in slowed.stdout.lines if line.startswith("FAILED")}
    assert failed == {"bs1-L1024-m2048-local", "bs4-L1024-m2048-local", "bs1-L1024-m2048-remote",
                      "bs4-L1024-m2048-remote"}
    saved["routes"]["bs4-L1024-m32"] = "remote"  # LOCAL is faster there by ~40%
    base.write_text(json.dumps(saved))
    flipped = pytester.runpytest_subprocess(*common, f"--ppd-results={pytester.path / 'r4'}", f"--ppd-baseline={base}",
                                            "-k", "regression")
    flipped.assert_outcomes(failed=1)
    flipped.stdout.fnmatch_lines(["*route of bs4-L1024-m32 flipped: remote -> local*"])
