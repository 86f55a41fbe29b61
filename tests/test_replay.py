"""Replay: the suites' assertions over stored records, with no server; seed 000's table is caught."""

from pathlib import Path

import pytest

from pytest_ppd.importer import records_from_table, write_records

ROOT = Path(__file__).resolve().parent.parent
SEED000 = ROOT / "suites" / "data" / "seed000_table.csv"


def test_seed000_points_below_the_floor_are_flagged():
    records = {(r.bs, r.L, r.m): r for r in records_from_table(SEED000, "Llama-3.1-8B", "H100-SXM")}
    impossible = {k for k, r in records.items() if any("below physical floor" in x for x in r.invalid_reasons)}
    assert {(1, 4096, 8192), (64, 4096, 8192), (32, 4096, 8192), (8, 4096, 2048)} <= impossible
    assert (1, 4096, 32) not in impossible
    over = {k for k, r in records.items() if any(x.startswith("capacity") for x in r.invalid_reasons)}
    assert (64, 16384, 8192) in over and (1, 4096, 32) not in over
    assert all(not r.valid for r in records.values())  # no cache proof in a published table


def test_replay_runs_the_grid_suite_over_seed000_and_fails_its_impossible_points(pytester):
    out = pytester.path / "seed000.jsonl"
    write_records(records_from_table(SEED000, "Llama-3.1-8B", "H100-SXM"), out)
    pytester.makepyfile(test_append_grid=(ROOT / "suites" / "test_append_grid.py").read_text())
    result = pytester.runpytest_subprocess("--ppd-backend=replay", f"--ppd-replay={out}",
                                           "--ppd-grid=bs=1,64;L=4096;m=32,8192", "-k", "local")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines([
        "*bs1-L4096-m8192-local: 0 of 1 rounds valid*",
        "*below physical floor: batch took 123.00 ms < floor 151.2* ms*",
        "*bs64-L4096-m8192-local: 0 of 1 rounds valid*",
        "*capacity: BS*(L+m) = 786432 > max_total_num_tokens*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_replay_of_sim_records_reproduces_the_verdicts(pytester, tmp_path):
    """A sim run's records replayed: same points pass, no server started."""
    pytester.makepyfile(test_append_grid=(ROOT / "suites" / "test_append_grid.py").read_text())
    res = tmp_path / "res"
    live = pytester.runpytest_subprocess("--ppd-grid=bs=1;L=512;m=16", f"--ppd-results={res}")
    live.assert_outcomes(passed=2)
    replay = pytester.runpytest_subprocess("--ppd-backend=replay", f"--ppd-replay={res / 'records.jsonl'}",
                                           "--ppd-grid=bs=1;L=512;m=16")
    replay.assert_outcomes(passed=2)


@pytest.mark.parametrize("gpu", ["H100-SXM", "H200"])
def test_kv_bytes_in_floor_follow_the_model_config(gpu):
    recs = records_from_table(SEED000, "Llama-3.1-8B", gpu)
    assert all(r.floor_ms > 0 for r in recs)
