"""Grids: presets, the explicit syntax, readable ids, and one clear error per malformed grid."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ppd.errors import ConfigError
from pytest_ppd.grid import PRESETS, GridPoint, parse_grid


def test_full_is_seed000s_6x4x7_grid_and_presets_are_ordered_products():
    full = parse_grid("full")
    assert len(full) == 168 and len(set(full)) == 168
    assert all(len(PRESETS[name]) > 0 for name in ("smoke", "quick", "full", "seed002"))


def test_a_point_reads_as_an_id_with_its_cache_rate_and_tokens():
    p = GridPoint(16, 4096, 512)
    assert p.id == "bs16-L4096-m512"
    assert p.cache_rate == pytest.approx(4096 / 4608) and p.total_tokens == 16 * 4608


@given(bs=st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
       L=st.lists(st.integers(0, 8192), min_size=1, max_size=3, unique=True),
       m=st.lists(st.integers(1, 8192), min_size=1, max_size=3, unique=True))
def test_the_explicit_syntax_is_the_product_of_its_axes_in_any_order_and_case(bs, L, m):
    text = f"m={','.join(map(str, m))}; l={' '.join(map(str, L))};BS={','.join(map(str, bs))}"
    grid = parse_grid(text)
    assert {(p.bs, p.L, p.m) for p in grid} == {(b, c, n) for b in bs for c in L for n in m}


@pytest.mark.parametrize("text,needle", [
    ("huge", "is not a grid; use a preset"),
    ("bs=1;L=8", "lacks m"),
    ("bs=1;bs=2;L=8;m=1", "axis bs appears twice"),
    ("bs=1;L=8;m=x", "is not a list of integers"),
    ("bs=0;L=8;m=1", "bs=0 must be >= 1"),
    ("bs=1;L=-1;m=1", "L=-1 must be >= 0"),
    ("bs=1;L=8;m=4,4", "duplicate value in m"),
    ("bs=1;L=8;m=", "has no values"),
    ("bs=1;q=8;m=1", "is not an axis"),
])
def test_a_malformed_grid_is_one_error_naming_the_syntax(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_grid(text)
