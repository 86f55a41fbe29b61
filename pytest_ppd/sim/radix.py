"""A radix prefix cache over token ids, with page alignment, locking and LRU eviction.

It mirrors what SGLang's RadixCache does for the quantities a benchmark can
observe: how many leading tokens of a prompt are already cached, how many
tokens the cache holds, and which ones go first when the pool is short::

    cache = RadixCache(page_size=1)
    cache.insert([1, 2, 3, 4])
    cache.match_prefix([1, 2, 3, 9]).length   # 3
"""

from __future__ import annotations

import heapq
import itertools
import struct
import sys
from typing import Sequence, Union

TOKEN_BYTES = 8  # a key holds token ids as signed 64-bit integers, so prefixes compare as bytes (memcmp)
Ids = Union[Sequence[int], bytes]  # token ids, or a key from RadixCache.encode
_NATIVE_LITTLE = sys.byteorder == "little" and struct.calcsize("q") == TOKEN_BYTES


def encode(ids: Ids) -> bytes:
    """The key of a sequence of token ids (a key is returned as is): one encoding per prompt, then every
    walk, slice and comparison is on bytes."""
    if isinstance(ids, bytes):
        return ids
    try:
        return struct.pack(f"<{len(ids)}q", *ids)
    except struct.error:
        raise ValueError("token ids must be integers that fit in 64 bits") from None


def ids_view(key: bytes) -> Sequence[int]:
    """The token ids of a key without copying them (a read-only sequence of ints over its bytes)."""
    if _NATIVE_LITTLE:
        return memoryview(key).cast("q")
    return list(struct.unpack(f"<{len(key) // TOKEN_BYTES}q", key))


def _common_prefix_len(a: bytes, b: bytes, start: int, end: int, unit: int) -> int:
    """Bytes of the longest common prefix of a and b[start:end], in whole units (a page of token ids): the lowest
    set bit of their little-endian XOR is the first byte that differs (a few C-speed passes, no search)."""
    size = min(len(a), end - start) // unit * unit
    if size <= 0:
        return 0
    diff = int.from_bytes(a[:size], "little") ^ int.from_bytes(b[start:start + size], "little")
    if not diff:
        return size
    return ((diff & -diff).bit_length() - 1) // 8 // unit * unit


class _Node:
    """A tree node; its key is the edge from its parent (encode(token ids)). Plain classes with their own
    ``__init__`` here and below: made on every walk, and compiled (PPD_COMPILE=1) to native constructors."""

    __slots__ = ("key", "parent", "children", "lock_ref", "last_access")

    def __init__(self, key: bytes = b"", parent: "_Node | None" = None, lock_ref: int = 0,
                 last_access: int = 0) -> None:
        self.key, self.parent, self.lock_ref, self.last_access = key, parent, lock_ref, last_access
        self.children: dict[bytes, _Node] = {}

    def __repr__(self) -> str:
        return f"_Node({len(self.key) // TOKEN_BYTES} tokens, lock_ref={self.lock_ref})"


class Match:
    """Result of a prefix lookup: the cached length and the node to lock (a value: never changed)."""

    __slots__ = ("length", "node")

    def __init__(self, length: int, node: _Node) -> None:
        self.length, self.node = length, node

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Match) and (self.length, self.node) == (other.length, other.node)

    def __hash__(self) -> int:
        return hash((self.length, id(self.node)))

    def __repr__(self) -> str:
        return f"Match(length={self.length}, node={self.node!r})"


class RadixCache:
    """Token-id radix tree; sizes are in tokens."""

    def __init__(self, page_size: int = 1, disabled: bool = False) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.page_size = page_size
        self.unit = page_size * TOKEN_BYTES  # a page, in key bytes
        self.disabled = disabled
        self._clock = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Drop every unlocked entry (what /flush_cache does when the server is idle)."""
        self.root = _Node(lock_ref=1)
        self.total_size = 0
        self.protected_size = 0
        self.nodes = 0
        # Eviction candidates, kept as they change instead of collected per eviction: (stamp, seq, node) with
        # stamp <= the node's last_access, at least one for every unlocked leaf. A touch does not push: evict()
        # re-enters an entry whose node was touched since (lazy LRU), and skips the ones no longer leaves.
        self._lru: list[tuple[int, int, _Node]] = []
        self._seq = itertools.count()

    def _candidate(self, node: _Node) -> None:
        """node may have become an unlocked leaf: enter it in the LRU heap."""
        if not node.children and node.lock_ref == 0 and node is not self.root:
            heapq.heappush(self._lru, (node.last_access, next(self._seq), node))
            if len(self._lru) > 4 * self.nodes + 64:
                self._compact()

    def _compact(self) -> None:
        """Rebuild the heap from the tree when stale entries outnumber live ones."""
        self._lru = [(n.last_access, next(self._seq), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(self._lru)

    def _page_key(self, key: bytes) -> bytes:
        return key[: self.unit]

    def _aligned(self, ids: Ids, tokens: int | None) -> tuple[bytes, int]:
        """The key and the bytes of it that count: its first ``tokens`` (default all), whole pages."""
        key = encode(ids)
        end = len(key) if tokens is None else min(max(tokens, 0) * TOKEN_BYTES, len(key))
        return key, end - end % self.unit

    def match_prefix(self, ids: Ids, tokens: int | None = None) -> Match:
        """Longest cached, page-aligned prefix of ids (token ids, or their key), or of their first ``tokens``
        (no copy of the key is made); touches the path for LRU."""
        if self.disabled:
            return Match(0, self.root)
        key, end = self._aligned(ids, tokens)
        return self._match(key, end)

    def _match(self, key: bytes, end: int, start: Match | None = None) -> Match:
        """The walk of key[:end] (whole pages)."""
        node, matched, stamp, unit = self.root, 0, next(self._clock), self.unit
        if start is not None and start.node.parent is not None and start.length * TOKEN_BYTES <= end:
            # start.node's path spells key[:start.length] (a locked node keeps it: it is split above, never
            # evicted): a walk from the root would cross it whole, so stamp it as that walk would, then go on.
            node, matched = start.node, start.length * TOKEN_BYTES
            while node is not self.root:
                node.last_access = stamp
                node = node.parent  # type: ignore[assignment]
            node = start.node
        while matched < end:
            child = node.children.get(key[matched:matched + unit])
            if child is None:
                break
            if key.startswith(child.key, matched, end):  # the whole edge (the usual case): one memcmp, no copy
                child.last_access = stamp
                node, matched = child, matched + len(child.key)
                continue
            common = _common_prefix_len(child.key, key, matched, end, unit)
            if common == 0:
                break
            child = self._split(child, common)
            child.last_access = stamp
            node, matched = child, matched + common
            break
        return Match(matched // TOKEN_BYTES, node)

    def _split(self, child: _Node, at: int) -> _Node:
        """Split child so that its first `at` key bytes become a new parent node."""
        parent = child.parent
        assert parent is not None
        upper = _Node(key=child.key[:at], parent=parent, lock_ref=child.lock_ref,
                      last_access=child.last_access)
        parent.children[self._page_key(upper.key)] = upper
        self.nodes += 1
        child.key = child.key[at:]
        child.parent = upper
        upper.children[self._page_key(child.key)] = child
        return upper

    def insert(self, ids: Ids, start: Match | None = None) -> int:
        """Cache ids (page-aligned); returns how many tokens were new. start: see insert_and_match."""
        return self.insert_and_match(ids, touch=False, start=start)[0]

    def insert_and_match(self, ids: Ids, touch: bool = True, start: Match | None = None,
                         tokens: int | None = None) -> tuple[int, Match]:
        """Cache ids (page-aligned), or their first ``tokens``: (tokens that were new, what ``match_prefix`` of
        the same now returns, its path touched when ``touch``) in one walk. start: a match of a prefix of ids
        whose node is locked since (or unchanged): the walk starts there instead of at the root, with the same
        result."""
        if self.disabled:
            return 0, Match(0, self.root)
        key, end = self._aligned(ids, tokens)
        match = self._match(key, end, start)
        rest = key[match.length * TOKEN_BYTES:end]
        node, new = match.node, len(rest) // TOKEN_BYTES
        if rest:
            node = _Node(key=rest, parent=match.node, last_access=next(self._clock))
            match.node.children[self._page_key(rest)] = node
            self.total_size += new
            self.nodes += 1
        if touch and node is not self.root:
            stamp, up = next(self._clock), node
            while up is not self.root and up is not None:
                up.last_access = stamp
                up = up.parent  # type: ignore[assignment]
        if rest:
            self._candidate(node)
        return new, Match(end // TOKEN_BYTES, node)

    def lock(self, node: _Node) -> None:
        """Protect node and its ancestors from eviction (a running request uses them)."""
        while node is not self.root and node is not None:
            if node.lock_ref == 0:
                self.protected_size += len(node.key) // TOKEN_BYTES
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: _Node) -> None:
        bottom = node
        while node is not self.root and node is not None:
            if node.lock_ref <= 0:
                raise RuntimeError("radix cache unlock without a matching lock")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.protected_size -= len(node.key) // TOKEN_BYTES
            node = node.parent  # type: ignore[assignment]
        if bottom is not None and bottom.lock_ref == 0:
            self._candidate(bottom)

    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens from least-recently-used unlocked leaves; returns tokens freed."""
        freed, heap = 0, self._lru
        while freed < num_tokens and heap:
            stamp, _, node = heapq.heappop(heap)
            if node.parent is None or node.children or node.lock_ref:
                continue  # gone, grown, or locked (an unlock enters it again)
            if stamp != node.last_access:  # touched since it was entered: enter it again at its stamp
                heapq.heappush(heap, (node.last_access, next(self._seq), node))
                continue
            parent = node.parent
            assert parent is not None
            del parent.children[self._page_key(node.key)]
            node.parent = None
            size = len(node.key) // TOKEN_BYTES
            freed += size
            self.total_size -= size
            self.nodes -= 1
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(self._seq), parent))
        return freed

    def _leaves(self) -> list[_Node]:
        out, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out

    def flush(self) -> bool:
        """Empty the cache if nothing is locked (SGLang refuses a flush with requests running)."""
        if self.protected_size:
            return False
        self.reset()
        return True

    def check_invariants(self) -> None:
        """Recount sizes from the tree; raises AssertionError on drift (used by the tests)."""
        total = protected = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for key, child in node.children.items():
                assert child.parent is node, "broken parent link"
                assert key == self._page_key(child.key), "child keyed by the wrong page"
                assert len(child.key) > 0 and len(child.key) % self.unit == 0
                assert child.lock_ref >= 0
                assert child.lock_ref <= node.lock_ref or node is self.root, "child locked more than parent"
                size = len(child.key) // TOKEN_BYTES
                total += size
                protected += size if child.lock_ref > 0 else 0
                stack.append(child)
        assert total == self.total_size, (total, self.total_size)
        assert protected == self.protected_size, (protected, self.protected_size)
