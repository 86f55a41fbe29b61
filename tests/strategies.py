"""Shared Hypothesis strategies."""

from hypothesis import strategies as st

# Small alphabets make shared prefixes (the interesting case) common.
token_seqs = st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40)

cache_ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), token_seqs),
        st.tuples(st.just("match"), token_seqs),
        st.tuples(st.just("lock"), token_seqs),
        st.tuples(st.just("unlock"), st.integers(min_value=0, max_value=10)),
        st.tuples(st.just("evict"), st.integers(min_value=0, max_value=60)),
    ),
    max_size=40,
)
