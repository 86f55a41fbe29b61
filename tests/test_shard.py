"""The grid sharded over pytest-xdist workers: each point measured once, one merged record file and report."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.shard import CLAIMS, SHARDS, Shard, check_sharding, gpus_for, merge

SUITES = Path(__file__).resolve().parent.parent / "suites"
GRID = "--ppd-grid=bs=1,8;L=1024;m=32,512"


def test_each_worker_gets_its_own_block_of_gpus():
    assert [gpus_for(f"gw{i}", 2, None) for i in range(3)] == ["0,1", "2,3", "4,5"]
    assert gpus_for("gw1", 2, "4,5,6,7") == "6,7"
    with pytest.raises(ConfigError, match="worker gw2 needs GPUs 4..5 of CUDA_VISIBLE_DEVICES=4,5,6,7"):
        gpus_for("gw2", 2, "4,5,6,7")


def test_a_point_is_claimed_once_and_a_dead_workers_claim_is_taken_over(tmp_path):
    a, b = Shard(tmp_path, "gw0"), Shard(tmp_path, "gw1")
    assert a.claim("bs1-L1024-m32-local") and a.claim("bs1-L1024-m32-local")  # idempotent for its owner
    (tmp_path / CLAIMS / "x").write_text(json.dumps({"worker": "gw1", "pid": os.getpid()}))
    assert b.claim("x")  # same process: ours
    (tmp_path / CLAIMS / "y").write_text(json.dumps({"worker": "gw9", "pid": 999_999_999}))
    assert a.claim("y") and json.loads((tmp_path / CLAIMS / "y").read_text())["worker"] == "gw0"


def test_merge_keeps_one_header_and_every_line(tmp_path):
    for w, n in (("gw0", 2), ("gw1", 3)):
        lines = [{"kind": "header", "run_id": "r"}] + [{"kind": "round", "bs": 1, "L": 0, "m": i, "path": w}
                                                       for i in range(n)]
        (tmp_path / f"records-{w}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn')
    merged = merge(tmp_path)
    kinds = Counter(json.loads(line)["kind"] for line in merged.read_text().splitlines())
    assert kinds == {"header": 1, "round": 5} and len(list((tmp_path / SHARDS).iterdir())) == 2
    assert merge(tmp_path) is None  # nothing new to merge


@pytest.mark.parametrize("backend,gpus,needle", [("external", None, "every worker would flush"),
                                                 ("sglang", None, "--ppd-gpus-per-worker N")])
def test_what_cannot_be_sharded_is_one_line(backend, gpus, needle):
    with pytest.raises(ConfigError, match=needle):
        check_sharding(backend, 2, gpus)
    check_sharding("sglang", 2, 2)


def _rounds(path: Path) -> dict:
    out: dict = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind", "round") == "round":
            out.setdefault((r["bs"], r["L"], r["m"], r["path"]), []).append((r["valid"], r["batch_latency_ms"]))
    return out


def test_two_workers_measure_what_one_does_once_each_with_one_report(pytester):
    """Virtual time: -n 2 gives the serial run's rounds exactly, each point measured by one worker, merged into
    one records.jsonl and one report; a resumed sharded run measures nothing again."""
    pytest.importorskip("xdist", reason="pytest-xdist is in the [dev] extra")
    pytester.makepyfile(test_append_grid=(SUITES / "test_append_grid.py").read_text())
    serial, sharded = pytester.path / "serial", pytester.path / "sharded"
    pytester.runpytest_subprocess(GRID, f"--ppd-results={serial}").assert_outcomes(passed=8)
    run = pytester.runpytest_subprocess("-n", "2", GRID, f"--ppd-results={sharded}")
    run.assert_outcomes(passed=8)
    assert _rounds(sharded / "records.jsonl") == _rounds(serial / "records.jsonl")
    done = Counter(line for line in (sharded / "records.jsonl").read_text().splitlines() if "point_done" in line)
    assert len(done) == 8 and set(done.values()) == {1}
    assert (sharded / "report.md").is_file() and len(list((sharded / SHARDS).iterdir())) == 2
    again = pytester.runpytest_subprocess("-n", "2", GRID, f"--ppd-results={sharded}", "--ppd-resume")
    again.assert_outcomes(passed=8)
    assert _rounds(sharded / "records.jsonl") == _rounds(serial / "records.jsonl")


def test_sharding_external_servers_is_refused_in_one_line(pytester):
    pytest.importorskip("xdist", reason="pytest-xdist is in the [dev] extra")
    pytester.makepyfile(test_append_grid=(SUITES / "test_append_grid.py").read_text())
    run = pytester.runpytest_subprocess("-n", "2", "--ppd-backend=external", "--ppd-url=http://127.0.0.1:9")
    assert run.ret != 0 and "every worker would flush and load the same servers" in run.stderr.str()
