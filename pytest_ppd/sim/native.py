"""The compiled build: ``PPD_COMPILE=1`` compiles the simulator's hot path with mypyc (setup.py lists the
modules); the pure-Python modules are the reference and the default.

    from pytest_ppd.sim.native import compiled; compiled()   # True when the engine core runs compiled

A compiled class has one base class plus traits (``@trait``: a mixin without a constructor). Both builds
give the same results, bit for bit (tests/test_native.py compares them).
"""

from __future__ import annotations

import copyreg
from importlib.machinery import EXTENSION_SUFFIXES
from dataclasses import fields
from typing import Any, Callable, TypeVar

_T = TypeVar("_T")

try:
    from mypy_extensions import mypyc_attr, trait
except ImportError:  # a pure install without mypy: the decorators are only markers for mypyc
    def trait(cls: _T) -> _T:  # type: ignore[no-redef]
        return cls

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:  # type: ignore[no-redef]
        return lambda cls: cls

COMPILED = ("pytest_ppd/sim/radix.py", "pytest_ppd/sim/engine.py", "pytest_ppd/sim/runs.py",
            "pytest_ppd/sim/deployment.py", "pytest_ppd/sim/costmodel.py", "pytest_ppd/sim/nodes.py",
            "pytest_ppd/sim/links.py", "pytest_ppd/cluster/routers.py", "pytest_ppd/cluster/routed.py",
            "pytest_ppd/cluster/runner.py", "pytest_ppd/cluster/trace.py",
            "pytest_ppd/cluster/elastic.py")  # what setup.py compiles


def compiled() -> bool:
    """True when this process runs the compiled engine core (a PPD_COMPILE=1 install)."""
    from pytest_ppd.sim import engine

    return (engine.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def picklable(*classes: type) -> None:
    """Pickle these frozen dataclasses as a call of the class with their fields: compiled, they refuse the
    __setattr__ that unpickling would use (results and specs cross to and from search workers)."""
    for cls in classes:
        copyreg.pickle(cls, _by_fields)


def _by_fields(obj: Any) -> tuple[type, tuple[Any, ...]]:
    return type(obj), tuple(getattr(obj, f.name) for f in fields(obj))
