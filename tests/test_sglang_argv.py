"""`ppd serve --backend sglang` command lines are accepted unchanged by SGLang 0.5.23's own parser.

SGLang needs CUDA to run, but its ServerArgs parsing and cross-flag resolution
run on CPU (tools/sglang_cpu_venv.sh builds such an environment, with only the
hardware probes faked). Point PPD_SGLANG_PYTHON at that venv's python:

    bash tools/sglang_cpu_venv.sh /tmp/sgvenv
    PPD_SGLANG_PYTHON=/tmp/sgvenv/bin/python pytest tests/test_sglang_argv.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKER = Path(__file__).parent / "support" / "check_sglang_argv.py"
SGLANG_PYTHON = os.environ.get("PPD_SGLANG_PYTHON")
needs_sglang = pytest.mark.skipif(not SGLANG_PYTHON, reason="set PPD_SGLANG_PYTHON to a python with SGLang 0.5.23")


def dry_run(tmp_path, *args, env=None):
    out = subprocess.run([sys.executable, "-m", "pytest_ppd.cli", "serve", "--backend", "sglang", "--dry-run",
                          "--workdir", str(tmp_path), *args], capture_output=True, text=True, check=True, env=env)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_sglang_argv_shape(tmp_path):
    """Without SGLang installed: GPUs 0 and 1 by default, one GPU split with --share-gpu (prefill 0.45 of the
    GPU; decode, started after it, 0.8 of what is left), key masked; mooncake_tcp without an RDMA device."""
    prefill, decode, router = dry_run(tmp_path)
    assert prefill[2] == "sglang.launch_server" and router[2] == "sglang_router.launch_router"
    assert prefill[prefill.index("--base-gpu-id") + 1] == "0" and decode[decode.index("--base-gpu-id") + 1] == "1"
    assert "--load-format" in prefill and prefill[prefill.index("--load-format") + 1] == "dummy"
    assert not any(a.startswith("--sim-") for a in prefill + decode)
    shared = dry_run(tmp_path, "--share-gpu", env={**os.environ, "PPD_API_KEY": "k-sentinel"})
    assert shared[1][shared[1].index("--base-gpu-id") + 1] == "0"
    assert [a[a.index("--mem-fraction-static") + 1] for a in shared[:2]] == ["0.45", "0.8"]
    expected = "mooncake" if Path("/sys/class/infiniband").is_dir() and any(Path("/sys/class/infiniband").iterdir()) \
        else "mooncake_tcp"
    assert all(a[a.index("--disaggregation-transfer-backend") + 1] == expected for a in (prefill, decode))
    assert "k-sentinel" not in json.dumps(shared) and "***" in shared[0]


@needs_sglang
@pytest.mark.parametrize("args", [(), ("--share-gpu",), ("--topology", "colocated")],
                         ids=["pd", "share-gpu", "colocated"])
def test_sglang_parser_accepts_our_argv(tmp_path, args):
    for argv in dry_run(tmp_path, *args):
        if argv[2] != "sglang.launch_server":
            continue
        result = subprocess.run([SGLANG_PYTHON, str(CHECKER), "--", *argv[3:]], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0 and "ACCEPTED" in result.stdout, result.stdout + result.stderr
