"""Seed 001's four single-request experiments, with its endpoint "scaling factor" and a proper fit.

Seed 001's scaling factor is (T_last / T_first) / (input_last / input_first),
a ratio of ratios that is 1.0 for linear scaling and ~1/ratio for constant
latency; the fit is the log-log slope over every proven round, with a 95% CI.
"""

import pytest

from pytest_ppd.analysis.scaling import fit_exponent
from pytest_ppd.grid import GridPoint

EXPERIMENTS = {
    # name: ((L, m) points, the x the fit uses)
    "fixed-total-1024": ([(102, 922), (204, 820), (307, 717), (512, 512), (716, 308), (922, 102)], "m"),
    "r0.5-vary-scale": ([(128, 128), (256, 256), (512, 512), (1024, 1024)], "L+m"),
    "L512-vary-m": ([(512, m) for m in (32, 64, 128, 256, 512, 1024)], "m"),
    "m128-vary-L": ([(L, 128) for L in (64, 256, 512, 1024, 2048)], "L"),
}


def _x(point: GridPoint, axis: str) -> int:
    return {"m": point.m, "L": point.L, "L+m": point.L + point.m}[axis]


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_seed001(experiment, ppd_path, ppd_measure, ppd_session):
    """Each experiment's points are proven; the fit's CI brackets its exponent; results are reported."""
    pairs, axis = EXPERIMENTS[experiment]
    points = [GridPoint(1, L, m) for L, m in pairs]
    outcomes = [ppd_measure(p, ppd_path) for p in points]
    xs, ys = [], []
    for point, outcome in zip(points, outcomes):
        for record in outcome.valid:
            xs.append(_x(point, axis))
            ys.append(record["batch_latency_ms"])
            assert record["batch_latency_ms"] >= record["floor_ms"]
    fit = fit_exponent(xs, ys)
    first, last = outcomes[0].summary.median, outcomes[-1].summary.median
    total_ratio = (points[-1].L + points[-1].m) / (points[0].L + points[0].m)
    seed_factor = (last / first) / total_ratio
    ppd_session.note(f"seed001 {experiment} [{ppd_path}]: exponent in {axis} = {fit.exponent:.3f} "
                     f"(95% CI {fit.ci_low:.3f}..{fit.ci_high:.3f}, n={fit.n}); endpoint slope "
                     f"{fit.endpoint_slope:.3f}; seed's scaling factor {seed_factor:.3f}; "
                     f"TTFT {first:.1f} -> {last:.1f} ms")
    assert fit.ci_low <= fit.exponent <= fit.ci_high
    assert fit.n == sum(len(o.valid) for o in outcomes)
