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
