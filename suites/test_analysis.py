"""The study's claims, asserted against expectations as data (suites/expectations/*.toml).

These run after every measurement of the session (the plugin orders them last)
and measure whatever grid point is still missing.
"""

from pytest_ppd.expectations import check_cells, check_routing, check_rows


def _records(ppd_session):
    return str(ppd_session.store.path) if ppd_session.config.backend != "replay" else str(ppd_session.config.replay)


def test_regimes_match_the_physics(ppd_study, ppd_expectations, ppd_session):
    """Each cell an expectation selects shows the expected regime (elasticity between adjacent m)."""
    failures = check_cells(ppd_expectations, ppd_study.cells, _records(ppd_session), ppd_study.rounds)
    assert not failures, "\n".join(failures)


def test_exponent_cis_lie_in_their_ranges(ppd_study, ppd_expectations, ppd_session):
    """Each row's 95% CI of the scaling exponent lies within its expected range."""
    failures = check_rows(ppd_expectations, ppd_study.fits, _records(ppd_session))
    assert not failures, "\n".join(failures)


def test_routing_boundary_and_router_regret(ppd_study, ppd_expectations, ppd_session):
    """The other route is never faster beyond noise; the router's regret <= the best fixed rule's."""
    assert not ppd_study.truth.empty, "no point was measured on both paths"
    failures = check_routing(ppd_expectations, ppd_study.truth, ppd_study.policies, _records(ppd_session),
                             ppd_study.rounds)
    assert not failures, "\n".join(failures)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_ppd.analysis.policies import trained_router  # noqa: E402
from pytest_ppd.analysis.routing import LOCAL  # noqa: E402


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bs=st.integers(1, 64), L=st.integers(0, 32768), interference=st.floats(0, 5))
def test_router_trained_on_this_run_keeps_its_properties(ppd_study, ppd_session, bs, L, interference):
    """Trained on the measured medians: one decision change at most as m grows; breakdowns add up."""
    if ppd_study.truth.empty:
        return
    router = trained_router(ppd_session.config.model, ppd_session.config.gpu, ppd_study.truth)
    router.params = type(router.params)(**{**router.params.__dict__, "interference_weight": interference})
    routes = []
    for m in (1, 16, 128, 1024, 8192):
        d = router.decide(bs, L, m, p_holds_context=True)
        for cost in (d.local, d.remote):
            assert abs(sum(cost.parts_s.values()) - cost.total_s) < 1e-12 and cost.total_s > 0
        routes.append(d.route)
    assert routes[0] == LOCAL and sum(a != b for a, b in zip(routes, routes[1:])) <= 1


def test_no_regime_route_or_exponent_regression(ppd_study, ppd_baseline, ppd_gate):
    """Against --ppd-baseline: no flipped regime or route, no exponent whose CI left the baseline's
    (the study half of the gate; each point's latency is gated in its own test)."""
    from pytest_ppd.baseline import compare_run

    findings = compare_run(ppd_baseline, [], ppd_study, ppd_gate)
    regressions = [f.text for f in findings if f.kind == "regression"]
    assert not regressions, "\n".join(regressions)
