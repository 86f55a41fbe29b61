"""The records store: append-only, fsynced, a torn tail skipped, resume only into the same design."""

import json

import pytest

from pytest_ppd.errors import ConfigError
from pytest_ppd.records import Record, RecordStore, derived_rates


def _record(round_=0, **kw):
    base = dict(suite="s", backend="virtual", path="local", model="Llama-3.1-8B", gpu="H100-SXM", bs=2, L=8, m=4,
                cache_rate=8 / 12, round=round_, ttft_ms=[1.0, 2.0], batch_latency_ms=2.0, batch_span_ms=2.0,
                e2e_ms=[1.0, 2.0], itl_ms_max=[None, None], prompt_tokens=[12, 12], cached_tokens=[8, 8],
                completion_tokens=[1, 1], server_ttft_ms=[1.0, 2.0], client_overhead_ms=[0.0, 0.0],
                errors=[None, None], valid=True, invalid_reasons=[], floor_ms=0.5,
                **derived_rates(2, 8, 4, 2.0), started_at=0.0, versions={"pytest_ppd": "0"})
    return Record(**{**base, **kw})


def test_rounds_come_back_as_written_with_their_header_and_done_marks(tmp_path):
    store = RecordStore(tmp_path, run_id="r1", config_hash="h")
    store.append(_record(0))
    store.append(_record(1, valid=False, invalid_reasons=["x"]))
    store.mark_done(2, 8, 4, "local", 2)
    store.append_json("interference", {"delta_ms": 1.5})
    back = RecordStore.read(store.path)
    assert back.header["run_id"] == "r1" and back.header["config_hash"] == "h"
    assert [r["round"] for r in back.rounds] == [0, 1] and back.rounds[1]["invalid_reasons"] == ["x"]
    assert back.done[0]["n_rounds"] == 2 and back.other[0]["delta_ms"] == 1.5
    assert "prefill_gpu" not in back.rounds[0]  # written only where P's GPU differs


def test_derived_rates_follow_their_formulas():
    rates = derived_rates(4, 1000, 24, 512.0)
    assert rates["throughput_tok_s"] == pytest.approx(4 * 1024 / 0.512)
    assert rates["new_tok_s"] == pytest.approx(4 * 24 / 0.512) and rates["ms_per_append_token"] == 512.0 / 24
    assert derived_rates(4, 1000, 24, None)["throughput_tok_s"] is None


def test_a_torn_last_line_is_skipped_and_cut_on_resume(tmp_path):
    store = RecordStore(tmp_path, run_id="r1", config_hash="h")
    store.append(_record(0))
    with open(store.path, "ab") as fh:
        fh.write(b'{"kind":"round","bs":2,"L"')  # the process died mid-write
    assert RecordStore.read(store.path).torn_tail
    resumed = RecordStore(tmp_path, run_id="r2", config_hash="h", resume=True)
    assert len(resumed.existing.rounds) == 1 and resumed.rounds_for(2, 8, 4, "local")
    assert not RecordStore.read(store.path).torn_tail


def test_resume_only_into_the_same_design_and_never_over_a_run_by_accident(tmp_path):
    RecordStore(tmp_path, run_id="r1", config_hash="h").append(_record(0))
    with pytest.raises(ConfigError, match="pass --ppd-resume"):
        RecordStore(tmp_path, run_id="r2", config_hash="h")
    with pytest.raises(ConfigError, match="different grid/config"):
        RecordStore(tmp_path, run_id="r2", config_hash="other", resume=True)


def test_a_damaged_line_inside_the_file_is_an_error_naming_it(tmp_path):
    store = RecordStore(tmp_path, run_id="r1", config_hash="h")
    with open(store.path, "a") as fh:
        fh.write("not json\n" + json.dumps({"kind": "round"}) + "\n")
    with pytest.raises(ConfigError, match=r"records.jsonl:2 is not a JSON record"):
        RecordStore.read(store.path)


def test_a_stored_round_reads_back_as_the_same_record(tmp_path):
    record = _record(3, valid=False, invalid_reasons=["below physical floor: x"], invalid_kinds=["floor"])
    store = RecordStore(tmp_path, run_id="r1", config_hash="h")
    store.append(record)
    stored = RecordStore.read(store.path).rounds[0]
    assert Record.from_json(stored) == record
    assert Record.from_json({**stored, "added_by_a_later_version": 1}) == record
    with pytest.raises(ConfigError, match="lacks bs"):
        Record.from_json({k: v for k, v in stored.items() if k != "bs"})


def test_a_point_outcome_holds_typed_records_that_old_suites_can_still_index():
    """PointOutcome.records are Records, built from stored JSON rounds by its one constructor; suites written
    for dict records (outcome.records[0]["floor_ms"]) keep working, read-only."""
    from pytest_ppd.client.runner import PointOutcome
    from pytest_ppd.grid import GridPoint

    rec = _record()
    outcome = PointOutcome.of(GridPoint(rec.bs, rec.L, rec.m), rec.path, [json.loads(rec.to_json()), rec])
    assert all(isinstance(r, Record) for r in outcome.records) and outcome.records[0] == rec
    assert rec["floor_ms"] == rec.floor_ms and "floor_ms" in rec and rec.get("nope", 7) == 7
    with pytest.raises(KeyError):
        rec["nope"]
    with pytest.raises(TypeError):
        rec["floor_ms"] = 1.0  # type: ignore[index]
