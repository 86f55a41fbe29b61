pytest_plugins = ["pytester"]

import os

# pytester restores sys.modules after each test; a C extension first imported inside one (scipy.stats
# pulls numpy.fft) cannot be loaded again afterwards, so load the analysis stack before any test runs.
import scipy.stats  # noqa: F401
from hypothesis import HealthCheck, settings

import pytest_ppd.analysis.study  # noqa: F401

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
