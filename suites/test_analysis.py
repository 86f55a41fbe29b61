"""The study's claims, asserted against expectations as data (suites/expectations/*.toml).

These run after every measurement of the session (the plugin orders them last)
and measure whatever grid point is still missing.
"""

from pytest_ppd.expectations import check_cells, check_routing, check_rows


def _records(ppd_session):
    return str(ppd_session.store.path) if ppd_session.config.backend != "replay" else str(ppd_session.config.replay)


def test_regimes_match_the_physics(ppd_study, ppd_expectations, ppd_session):
    """Each cell an expectation selects shows the expected regime (elasticity between adjacent m)."""
    failures = check_cells(ppd_expectations, ppd_study.cells, _records(ppd_session))
    assert not failures, "\n".join(failures)


def test_exponent_cis_lie_in_their_ranges(ppd_study, ppd_expectations, ppd_session):
    """Each row's 95% CI of the scaling exponent lies within its expected range."""
    failures = check_rows(ppd_expectations, ppd_study.fits, _records(ppd_session))
    assert not failures, "\n".join(failures)


def test_routing_boundary_and_router_regret(ppd_study, ppd_expectations, ppd_session):
    """The faster route matches the expectation at every point; the router's regret <= the best fixed rule's."""
    assert not ppd_study.truth.empty, "no point was measured on both paths"
    failures = check_routing(ppd_expectations, ppd_study.truth, ppd_study.policies, _records(ppd_session))
    assert not failures, "\n".join(failures)
