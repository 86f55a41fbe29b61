"""Seed 000's study: append-prefill latency over the BS x L x m grid, LOCAL and REMOTE."""


def test_append(ppd_point, ppd_path, ppd_measure):
    """Every point is measured with proven rounds on both paths."""
    outcome = ppd_measure(ppd_point, ppd_path)
    assert outcome.summary is not None
    assert outcome.summary.median >= outcome.records[0]["floor_ms"]
