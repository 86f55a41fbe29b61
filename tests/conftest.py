pytest_plugins = ["pytester"]

import os

# pytester restores sys.modules after each test; a C extension first imported inside one (scipy.stats
# pulls numpy.fft) cannot be loaded again afterwards, so load the analysis stack before any test runs.
import scipy.stats  # noqa: F401
from hypothesis import HealthCheck, settings

import pytest_ppd.analysis.study  # noqa: F401
from pytest_ppd.sim.native import compiled

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

import pytest

# Figures the reliability tests measure (processes left, records lost, bad inputs handled), printed
# at the end of the run: the fault matrix's numbers belong in the CI log, not only in assertions.
FIGURES: dict[str, object] = {}


@pytest.fixture
def figures() -> dict[str, object]:
    return FIGURES


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if FIGURES:
        terminalreporter.section("pytest-ppd reliability figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """On the compiled build (PPD_COMPILE=1) a test that patches or subclasses a compiled class cannot run."""
    if compiled():
        skip = pytest.mark.skip(reason="patches or subclasses a compiled class: runs on the pure-Python build")
        for item in items:
            if item.get_closest_marker("pure"):
                item.add_marker(skip)
