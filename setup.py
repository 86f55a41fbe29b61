"""Build hook: pure Python unless PPD_COMPILE=1, which compiles the simulator's hot path with mypyc.

    pip install -U mypy "setuptools>=68" wheel && rm -rf build && PPD_COMPILE=1 pip install --no-build-isolation .

The modules it compiles are listed in pytest_ppd/sim/native.py. Not for editable installs: a compiled module
would shadow its .py in the source tree, and an edit to the .py would go unseen. ``rm -rf build`` first: setuptools
packages whatever an earlier build left in build/lib (a module no longer compiled would stay compiled).
"""

import ast
import os
import sys
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list[str]:
    tree = ast.parse(Path(__file__).with_name("pytest_ppd").joinpath("sim", "native.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: pytest_ppd/sim/native.py has no COMPILED tuple")


ext_modules = []
if os.environ.get("PPD_COMPILE") == "1":
    if any("editable" in arg or arg == "develop" for arg in sys.argv):
        raise SystemExit("PPD_COMPILE=1 builds a regular install, not an editable one (compiled modules would "
                         "shadow the sources you edit): PPD_COMPILE=1 pip install --no-build-isolation .")
    if {"bdist_wheel", "build", "build_ext", "install", "bdist_egg"} & set(sys.argv):  # not for metadata
        try:
            from mypyc.build import mypycify
        except ImportError:
            raise SystemExit("PPD_COMPILE=1 needs mypy in the build environment: pip install mypy, then "
                             "PPD_COMPILE=1 pip install --no-build-isolation .") from None
        ext_modules = mypycify(compiled_modules(), opt_level="3")

setup(ext_modules=ext_modules)
