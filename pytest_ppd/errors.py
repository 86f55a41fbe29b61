"""The one exception hierarchy of pytest-ppd.

::

    PpdError
    ├── ConfigError          bad user input; the message names the fix
    │   └── UnknownNameError an unknown model / GPU / link / backend name
    ├── ServerLaunchError    a server never became healthy (carries its log tail)
    ├── MeasurementError     a setup step of a measurement failed (not a bad round)
    └── Infeasible           a grid point whose BS x (L + m) tokens cannot stay in the KV pool

A failed *request* is data (it lands in a record), never an exception.
"""

from __future__ import annotations


class PpdError(Exception):
    """Base class of every error pytest-ppd raises on purpose."""


class ConfigError(PpdError, ValueError):
    """Bad user input: one line that names what is accepted."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a built-in table; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ServerLaunchError(PpdError):
    """A server process exited or never became healthy during start-up."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail

    def __str__(self) -> str:
        base = super().__str__()
        if self.log_tail:
            return f"{base}\n--- last lines of its log ---\n{self.log_tail}"
        return base


class MeasurementError(PpdError):
    """A setup step of a measurement (warm-up, flush, server info) failed."""


class Infeasible(PpdError):
    """A point whose BS x (L + m) tokens cannot all stay in the server's KV pool (reported, not run)."""
