"""Mooncake trace JSONL, read and written, and the exact token ids a trace's blocks stand for.

One request a line: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids`` (one id per
512-token block; shared ids = shared prefix), as the Mooncake FAST'25 traces, AIPerf's
``--custom-dataset-type mooncake_trace`` and Dynamo's replay read them. Multi-turn: AIPerf's extension,
``session_id`` on every turn, ``timestamp`` on the first, ``delay`` (ms after the previous turn's answer)
on the later ones.

    write_trace(trace, "chat.jsonl"); read_trace("chat.jsonl") == trace
    tokens = BlockTokens(vocab_size=128256); tokens.ids(trace.requests[0])   # exact input_ids
"""

from __future__ import annotations

import json
from hashlib import blake2b, shake_128
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from pytest_ppd.cluster.workload import BLOCK_TOKENS, Trace, TraceRequest
from pytest_ppd.errors import ConfigError
from pytest_ppd.sim.radix import TOKEN_BYTES, encode, ids_view

_LOW = 1000  # clear of special ids, as the grid's workloads (client/workload.py)
_U_LOW, _S32, _S29 = np.uint64(_LOW), np.uint64(32), np.uint64(29)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # SplitMix64's multipliers (odd)
_FORMAT = "a Mooncake trace line is {\"timestamp\": ms, \"input_length\": n, \"output_length\": n, \"hash_ids\": [...]}"


def to_json(req: TraceRequest) -> dict[str, Any]:
    """The line's object: Mooncake's four keys, plus session_id / delay for multi-turn sessions."""
    line: dict[str, Any] = {}
    if req.timestamp_ms is not None:
        line["timestamp"] = req.timestamp_ms
    line.update(input_length=req.input_length, output_length=req.output_length, hash_ids=list(req.hash_ids))
    if req.session_id is not None:
        line["session_id"] = req.session_id
    if req.delay_ms is not None:
        line["delay"] = req.delay_ms
    return line


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write the trace as Mooncake JSONL; the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(to_json(r)) + "\n" for r in trace.requests))
    return path


def _int(line: dict[str, Any], key: str, where: str, *, low: int, required: bool = True) -> int | None:
    value = line.get(key)
    if value is None and not required:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{where}: '{key}' must be an integer >= {low}, got {value!r} ({_FORMAT})")
    return value


def from_json(line: Any, where: str, block_tokens: int = BLOCK_TOKENS) -> TraceRequest:
    """One line's request, checked; ``where`` names the line in the error."""
    if not isinstance(line, dict):
        raise ConfigError(f"{where}: not a JSON object ({_FORMAT})")
    length = _int(line, "input_length", where, low=1)
    output = _int(line, "output_length", where, low=1)
    assert length is not None and output is not None
    ids = line.get("hash_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"{where}: 'hash_ids' must be a list of integers >= 0 ({_FORMAT})")
    if len(ids) < -(-length // block_tokens):
        raise ConfigError(f"{where}: {len(ids)} hash_ids cover {len(ids) * block_tokens} tokens, fewer than "
                          f"input_length {length}; give one id per {block_tokens}-token block")
    session = line.get("session_id")
    return TraceRequest(length, output, tuple(ids), timestamp_ms=_int(line, "timestamp", where, low=0, required=False),
                        session_id=None if session is None else str(session),
                        delay_ms=_int(line, "delay", where, low=0, required=False))


def read_trace(path: str | Path, *, name: str | None = None) -> Trace:
    """A Mooncake JSONL trace; each turn of a session after its first needs no timestamp."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trace {path} does not exist; write one with `ppd cluster --write-trace FILE`")
    requests, seen = [], set()
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            line = json.loads(text)
        except ValueError:
            raise ConfigError(f"{where}: not JSON ({_FORMAT})") from None
        req = from_json(line, where)
        first = req.session_id is None or req.session_id not in seen
        if first and req.timestamp_ms is None:
            raise ConfigError(f"{where}: the first turn of a session (or a single request) needs a 'timestamp'")
        seen.add(req.session_id)
        requests.append(req)
    if not requests:
        raise ConfigError(f"trace {path} holds no requests")
    return Trace(name or path.stem, tuple(requests))


class BlockTokens:
    """Token ids for hash ids: block ``h`` is the same 512 ids wherever it appears, so shared ids are a
    shared prefix in the radix cache; ids are drawn in [1000, vocab - 1) from a BLAKE2 seed of (salt, h).

    Blocks are kept (packed, 8 bytes a token) up to ``MEMO`` of them, the oldest made forgotten first: a
    later turn asks again for its conversation's last block soon after it was made, and a search that
    replays one trace many times (``shared``) draws each block once."""

    MEMO = 16384  # blocks kept: 64 MiB of 512-token blocks
    _shared: ClassVar[dict[tuple[int, int, int], "BlockTokens"]] = {}

    def __init__(self, vocab_size: int, *, block_tokens: int = BLOCK_TOKENS, salt: int = 0) -> None:
        if vocab_size <= 2 * _LOW:
            raise ConfigError(f"vocabulary of {vocab_size} ids is too small for trace blocks (> {2 * _LOW})")
        self.vocab, self.block_tokens, self.salt = vocab_size, block_tokens, salt
        self._blocks: dict[int, bytes] = {}
        self._lanes = np.frombuffer(shake_128(b"ppd-block-lanes").digest(8 * block_tokens), dtype="<u8").copy()
        self._range = np.uint64(vocab_size - 1 - _LOW)

    @classmethod
    def shared(cls, vocab_size: int, *, block_tokens: int = BLOCK_TOKENS, salt: int = 0) -> "BlockTokens":
        """One instance per (vocabulary, block size, salt) in this process (a few at most)."""
        key = (vocab_size, block_tokens, salt)
        if key not in cls._shared:
            if len(cls._shared) >= 4:
                cls._shared.pop(next(iter(cls._shared)))
            cls._shared[key] = cls(vocab_size, block_tokens=block_tokens, salt=salt)
        return cls._shared[key]

    def _block(self, h: int) -> bytes:
        """Block h's ids as key bytes (``radix.encode``)."""
        ids = self._blocks.get(h)
        if ids is None:
            # Token k of block h: a bijective 64-bit mix (two xorshift-multiply rounds with SplitMix64's
            # multipliers) of (block's seed XOR lane k's constant), reduced into
            # [_LOW, vocab - 1). Two blocks' ids agree at a lane with chance 1 / range, lane by lane, as if drawn
            # at random; the same ids with any numpy (integer operations only), at a third of a SHAKE stream's cost.
            seed = np.uint64(int.from_bytes(blake2b(f"ppd-block:{self.salt}:{h}".encode(), digest_size=8).digest(),
                                            "little"))
            x = np.bitwise_xor(self._lanes, seed)
            x *= _MIX1  # wraps mod 2**64
            x ^= x >> _S32
            x *= _MIX2
            x ^= x >> _S29
            x %= self._range
            x += _U_LOW
            ids = x.astype("<i8").tobytes()
            if len(self._blocks) >= self.MEMO:
                del self._blocks[next(iter(self._blocks))]
            self._blocks[h] = ids
        return ids

    def block(self, h: int) -> list[int]:
        """Block h's token ids."""
        return list(ids_view(self._block(h)))

    def key(self, req: TraceRequest, start: int = 0) -> bytes:
        """``radix.encode(self.ids(req, start))``, joined from the blocks' bytes (no ids are made)."""
        return b"".join(self._parts(req, start))

    def _parts(self, req: TraceRequest, start: int) -> list[bytes | memoryview]:
        """The pieces of key(req, start), in order: its blocks, the first and the last cut (views, no copies)."""
        bt, size = self.block_tokens, TOKEN_BYTES
        first, need = start // bt, -(-req.input_length // bt)
        if len(req.hash_ids) < need:
            raise ConfigError(f"a trace request of {req.input_length} tokens needs {need} hash_ids of "
                              f"{bt} tokens, it has {len(req.hash_ids)}: give one hash id per block")
        parts: list[bytes | memoryview] = [self._block(h) for h in req.hash_ids[first:need]]
        if not parts:
            return parts
        head, tail = (start - first * bt) * size, (req.input_length - (need - 1) * bt) * size
        if len(parts) == 1:
            parts[0] = memoryview(parts[0])[head:tail]
        else:
            parts[0], parts[-1] = memoryview(parts[0])[head:], memoryview(parts[-1])[:tail]
        return parts

    def ids(self, req: TraceRequest, start: int = 0) -> list[int]:
        """The request's exact input ids from ``start`` on: its blocks, the last one cut to input_length."""
        return list(ids_view(self.key(req, start)))

    def turn_ids(self, req: TraceRequest, before: TraceRequest, sent: Sequence[int],
                 answer: Sequence[int]) -> list[int]:
        """A later turn as a chat client sends it: what it sent last turn, the answer it got, then the new
        tokens of the turn's own blocks. A turn whose blocks do not extend the previous turn's (or that is
        too short to hold the conversation) is sent as its blocks say."""
        return list(self.turn(req, before, sent, answer)[0])

    def turn(self, req: TraceRequest, before: TraceRequest, sent: Sequence[int], answer: Sequence[int],
             sent_key: bytes | None = None) -> tuple[Sequence[int], bytes]:
        """turn_ids and its key; with the key of what was sent, the turn's key is grown from it and its ids are
        a view of the key (``radix.ids_view``: no ids copied)."""
        cut = len(sent) + len(answer)
        if cut > req.input_length or req.hash_ids[: len(before.hash_ids)] != before.hash_ids:
            key = self.key(req)
        else:  # one copy: the conversation so far, then the turn's own tokens
            key = b"".join([encode(sent) if sent_key is None else sent_key, encode(answer), *self._parts(req, cut)])
        return ids_view(key), key
