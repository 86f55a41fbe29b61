"""The radix prefix cache keeps its sizes, matches and locks consistent."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_ppd.sim.radix import RadixCache, encode, ids_view
from tests.strategies import cache_ops, token_seqs


def test_match_after_insert_returns_shared_prefix():
    """A prompt sharing 3 tokens with a cached one matches exactly 3."""
    cache = RadixCache()
    assert cache.insert([1, 2, 3, 4]) == 4
    assert cache.match_prefix([1, 2, 3, 9]).length == 3
    assert cache.insert([1, 2, 3, 9]) == 1
    assert cache.total_size == 5
    cache.check_invariants()


def test_page_size_rounds_matches_down():
    """With page_size 4 only whole pages are cached and matched."""
    cache = RadixCache(page_size=4)
    assert cache.insert(list(range(10))) == 8
    assert cache.match_prefix(list(range(7)) + [99]).length == 4
    cache.check_invariants()


def test_locked_prefix_survives_eviction():
    """Eviction frees LRU unlocked leaves and never a locked path."""
    cache = RadixCache()
    cache.insert([1, 2, 3])
    cache.insert([7, 8, 9])
    locked = cache.match_prefix([1, 2, 3])
    cache.lock(locked.node)
    assert cache.evict(100) == 3
    assert cache.match_prefix([1, 2, 3]).length == 3
    assert cache.match_prefix([7, 8, 9]).length == 0
    cache.unlock(locked.node)
    assert cache.evict(100) == 3 and cache.total_size == 0


def test_evicts_least_recently_used_first():
    """The entry touched longest ago goes first."""
    cache = RadixCache()
    cache.insert([1, 1])
    cache.insert([2, 2])
    cache.match_prefix([1, 1])  # touch: [2, 2] is now the oldest
    cache.evict(1)
    assert cache.match_prefix([1, 1]).length == 2
    assert cache.match_prefix([2, 2]).length == 0


def test_disabled_cache_matches_nothing():
    cache = RadixCache(disabled=True)
    cache.insert([1, 2, 3])
    assert cache.match_prefix([1, 2, 3]).length == 0 and cache.total_size == 0


def test_flush_refused_while_locked():
    cache = RadixCache()
    cache.insert([5, 6])
    m = cache.match_prefix([5, 6])
    cache.lock(m.node)
    assert cache.flush() is False
    cache.unlock(m.node)
    assert cache.flush() is True and cache.total_size == 0


@given(cache_ops, st.sampled_from([1, 2, 4]))
def test_invariants_hold_under_any_operation_sequence(ops, page_size):
    """Sizes recount exactly, locked tokens are never evicted, matches are real prefixes."""
    cache = RadixCache(page_size=page_size)
    inserted: list[tuple[int, ...]] = []
    locks = []
    for op, arg in ops:
        if op == "insert":
            cache.insert(arg)
            inserted.append(tuple(arg))
        elif op == "match":
            n = cache.match_prefix(arg).length
            assert n % page_size == 0 and n <= len(arg)
            if n:
                assert any(tuple(arg[:n]) == s[:n] for s in inserted), "matched a prefix never inserted"
        elif op == "lock":
            m = cache.match_prefix(arg)
            cache.lock(m.node)
            locks.append((m, tuple(arg[: m.length])))
        elif op == "unlock" and locks:
            m, _ = locks.pop(arg % len(locks))
            cache.unlock(m.node)
        elif op == "evict":
            before = cache.total_size
            freed = cache.evict(arg)
            assert cache.total_size == before - freed
            assert cache.total_size >= cache.protected_size
        cache.check_invariants()
        for _m, prefix in locks:
            assert cache.match_prefix(list(prefix)).length == len(prefix), "a locked prefix was lost"


@given(token_seqs)
def test_insert_then_match_whole_sequence(seq):
    cache = RadixCache()
    cache.insert(seq)
    assert cache.match_prefix(seq).length == len(seq)


def _scan_order(cache: RadixCache) -> list[tuple[int, ...]]:
    """Reference eviction: every unlocked leaf collected now, least recently used first (SGLang's evict)."""
    return [n.key for n in sorted((n for n in cache._leaves() if n.lock_ref == 0), key=lambda n: n.last_access)]


@given(cache_ops, st.sampled_from([1, 2]))
def test_incremental_lru_evicts_what_a_full_scan_would(ops, page_size):
    """The heap kept across operations picks the same first victim as collecting the leaves at eviction time,
    and frees exactly as many tokens as a scan-based eviction of the same tree."""
    cache = RadixCache(page_size=page_size)
    locks = []
    for op, arg in ops:
        if op == "insert":
            cache.insert(arg)
        elif op == "match":
            cache.match_prefix(arg)
        elif op == "lock":
            m = cache.match_prefix(arg)
            cache.lock(m.node)
            locks.append(m)
        elif op == "unlock" and locks:
            cache.unlock(locks.pop(arg % len(locks)).node)
        elif op == "evict":
            expected = _scan_order(cache)
            leaves = {id(n): n for n in cache._leaves()}
            freed = cache.evict(max(arg, 1))
            gone = [n.key for n in leaves.values() if n.parent is None]
            if expected:
                assert expected[0] in gone, "the least recently used leaf was not evicted first"
            else:
                assert freed == 0
        cache.check_invariants()


@given(token_seqs)
def test_a_keys_view_is_its_ids_without_a_copy(ids):
    key = encode(ids)
    view = ids_view(key)
    assert list(view) == list(ids) and len(view) == len(ids) and (not ids or view[-1] == ids[-1])
    with pytest.raises(TypeError):
        view[0:1] = [0]  # type: ignore[index]


def _dump(node) -> tuple:
    return (node.key, node.last_access, node.lock_ref, tuple(_dump(c) for _, c in sorted(node.children.items())))


@given(cache_ops, token_seqs, token_seqs, st.booleans())
def test_a_walk_from_a_locked_node_is_the_walk_from_the_root(ops, prompt, tail, touch):
    """insert_and_match(start=a locked match) leaves the tree, its LRU stamps and its answer as a root walk would,
    whatever happened to the tree since the match (the engine walks on from a request's node this way)."""
    trees = []
    for use_start in (False, True):
        cache = RadixCache()
        cache.insert(prompt[: len(prompt) // 2])
        m = cache.match_prefix(prompt)
        cache.lock(m.node)
        for op, arg in ops:  # other requests come and go meanwhile
            if op == "insert":
                cache.insert(arg)
            elif op in ("match", "lock"):
                cache.match_prefix(arg)
            elif op == "evict":
                cache.evict(arg)
        ids = prompt[: m.length] + tail
        new, got = cache.insert_and_match(ids, touch=touch, start=m if use_start else None)
        cache.check_invariants()
        trees.append((new, got.length, _dump(cache.root)))
    assert trees[0] == trees[1]
