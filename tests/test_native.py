"""The compiled build (PPD_COMPILE=1, setup.py) against the pure-Python modules it compiles: the same
results, bit for bit. CI installs it in a second environment and runs this file there."""

import ast
import copy
import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from pytest_ppd.cluster import generate, parse_deployment, simulate, workload_spec
from pytest_ppd.cluster.routers import Rule
from pytest_ppd.cluster.runner import RequestResult
from pytest_ppd.sim.costmodel import Extend
from pytest_ppd.sim.native import COMPILED, compiled, trait

ROOT = Path(__file__).resolve().parents[1]
CASES = [("multiturn", 400, 80.0, "agg", "cache", None), ("multiturn", 400, 80.0, "2P6D", "cache", None),
         ("seed003", 200, 32.0, "2P6D", "rr", "vllm-ppd"), ("chat", 200, 32.0, "agg", "sticky", None)]


def digests() -> list[str]:
    """One digest per case of every request's result, the run's span and its KV bytes."""
    out = []
    for workload, requests, rate, deployment, policy, rule in CASES:
        trace = generate(workload_spec(workload, requests=requests, rate=rate), seed=1)
        run = simulate(parse_deployment(deployment, 8, policy=policy, rule=rule), trace)
        rows = [tuple(getattr(r, f.name) for f in fields(r)) for r in run.results]
        out.append(hashlib.sha256(repr((rows, run.span_ns, run.kv_bytes, run.events)).encode()).hexdigest())
    return out


def test_the_build_is_the_one_expected():
    """CI sets PPD_EXPECT_COMPILED=1 where it installed the compiled build: a pure import there is a failure."""
    if os.environ.get("PPD_EXPECT_COMPILED") == "1":
        assert compiled(), "expected the compiled build (PPD_COMPILE=1); the pure-Python modules were imported"


def test_setup_compiles_modules_that_exist_and_reads_their_list_from_the_package():
    tree = ast.parse((ROOT / "setup.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "compiled_modules" for n in tree.body)
    assert COMPILED and all((ROOT / m).is_file() for m in COMPILED)
    assert "pytest_ppd/sim/engine.py" in COMPILED and "pytest_ppd/cluster/elastic.py" in COMPILED


def test_trait_is_a_marker_and_frozen_results_pickle_by_their_fields():
    class Mixin:
        pass

    assert trait(Mixin) is Mixin
    chunk = Extend(5, 7, logits=False, admitted_prompt=12, host_s=0.5)
    assert pickle.loads(pickle.dumps(chunk)) == chunk and copy.deepcopy(chunk) == chunk
    r = RequestResult(3, "s", 10, 4, 4, 2, 5, 6, 9, "colocated0", None)
    assert pickle.loads(pickle.dumps(r)) == r and pickle.loads(pickle.dumps(Rule("llmd", 7))) == Rule("llmd", 7)
    with pytest.raises(FrozenInstanceError):
        r.index = 4  # type: ignore[misc]


@pytest.mark.skipif(not compiled(), reason="this process imported the pure modules: no compiled build installed "
                    "(README: PPD_COMPILE=1), or the source tree comes first on sys.path (run pytest with python -P)")
def test_the_compiled_build_gives_the_pure_builds_results_bit_for_bit():
    from pytest_ppd.sim import engine

    assert not engine.__file__.endswith(".py")  # what runs here is compiled
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_native import digests; "
              "from pytest_ppd.sim.native import compiled; assert not compiled(); print(*digests())")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the sources first: the pure modules
    pure = subprocess.run([sys.executable, "-P", "-c", script, str(ROOT)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert pure.returncode == 0, pure.stderr
    assert pure.stdout.split() == digests()
