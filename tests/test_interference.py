"""Interference arithmetic: seed 000's 500 ms half-point and the ITL split."""

import pytest

from pytest_ppd.analysis.interference import interference_score, measure_from_stamps, split_itls


def test_score_is_half_at_500_ms_and_zero_without_increase():
    assert interference_score(500) == pytest.approx(0.5)
    assert interference_score(0) == 0 and interference_score(-20) == 0
    assert interference_score(5000) > 0.9


def test_itls_split_at_the_append_window():
    ms = 1_000_000
    stream = [0, 10 * ms, 20 * ms, 30 * ms, 530 * ms, 540 * ms]
    before, during = split_itls([stream], start_ns=35 * ms, end_ns=520 * ms)
    assert before == [10, 10, 10] and during == [500]


def test_measure_reports_the_p99_increase():
    ms = 1_000_000
    streams = [[i * 10 * ms for i in range(20)] + [700 * ms, 710 * ms] for _ in range(3)]
    result = measure_from_stamps(streams, start_ns=195 * ms, end_ns=690 * ms)
    assert result.p99_before_ms == pytest.approx(10)
    assert result.delta_ms > 400 and result.score > 0.4


def test_too_few_gaps_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        measure_from_stamps([[0, 1]], 0, 1)
