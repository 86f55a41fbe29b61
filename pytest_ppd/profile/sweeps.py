"""The sweep designs of ``ppd profile``: Dynamo's prefill and decode grids, plus the cached-context grid.

The prefill and decode grids are Dynamo 1.6.1's own (``dynamo/profiler/utils/profile_prefill.py`` and
``profile_decode.py``), point for point, so a profile lines up with one Dynamo would take::

    prefill_isls(16384, 16)             # range(100, 16384 - 512, (16384 - 612) // 16): 16 or 17 points
    decode_points(16384, 419019, 500, 6, 2000)   # [(isl, concurrency), ...], ISL-major
    cached_points((32, 512), (0, 4096), limit=8192)

A design is a frozen value; its hash (with the model, GPU, TP and engine argv) names the records a
resumed run may reuse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from pytest_ppd.errors import ConfigError

PREFILL_MIN_ISL = 100  # Dynamo's first ISL, prefill and decode alike
TEMPLATE_RESERVE = 512  # Dynamo leaves this much of the context for a chat template and system prompt
DYNAMO_DECODE_OSL = 500  # "not too large to reduce ITL variance, not too small to have stable measurement"
DYNAMO_PREFILL_OSL = 5  # AIPERF_PREFILL_BENCHMARK_OSL
DECODE_MAX_CONCURRENCY = 2000  # Dynamo's cap "due to limits of profiling tools"
DEFAULT_CACHED_M = (32, 128, 512, 2048, 8192)
DEFAULT_CACHED_L = (0, 1024, 4096, 16384)


def _positive_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} '{text}': use comma-separated token counts, e.g. 32,512,2048") from None
    if not values:
        raise ConfigError(f"{what} '{text}' is empty; give at least one token count, e.g. 512")
    return values


def parse_tokens(text: str, what: str = "--cached-m") -> tuple[int, ...]:
    """'32,512,2048' -> (32, 512, 2048): sorted, distinct, every value > 0."""
    values = _positive_ints(text, what)
    if min(values) <= 0:
        raise ConfigError(f"{what} '{text}': every value must be > 0")
    return tuple(sorted(set(values)))


def parse_context(text: str, what: str = "--cached-L") -> tuple[int, ...]:
    """'0,1024,4096' -> (0, 1024, 4096): sorted, distinct, every value >= 0 (0 = no cached context)."""
    values = _positive_ints(text, what)
    if min(values) < 0:
        raise ConfigError(f"{what} '{text}': every value must be >= 0")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class ProfileDesign:
    """What to sweep and how often; defaults are Dynamo's grids and our cached-context grid."""

    prefill_granularity: int = 16
    prefill_reps: int = 3  # fresh, proven-uncached requests per ISL (Dynamo measures one)
    prefill_osl: int = DYNAMO_PREFILL_OSL
    decode_granularity: int = 6
    decode_osl: int = DYNAMO_DECODE_OSL
    decode_max_concurrency: int = DECODE_MAX_CONCURRENCY
    cached_m: tuple[int, ...] = DEFAULT_CACHED_M
    cached_L: tuple[int, ...] = DEFAULT_CACHED_L
    cached_reps: int = 3
    sweeps: tuple[str, ...] = ("prefill", "decode", "cached")
    seed: int = 0

    def validate(self) -> "ProfileDesign":
        """Itself with the cached axes sorted and distinct, or a ConfigError naming the setting to fix."""
        for name in ("prefill_granularity", "prefill_reps", "prefill_osl", "decode_osl", "cached_reps",
                     "decode_max_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.decode_granularity < 2:
            raise ConfigError(f"--decode-granularity must be >= 2 (Dynamo uses 6), got {self.decode_granularity}")
        unknown = sorted(set(self.sweeps) - set(SWEEPS))
        if unknown or not self.sweeps:
            raise ConfigError(f"--sweeps: {', '.join(unknown) or 'none given'}; valid: {', '.join(SWEEPS)}")
        return replace(self, cached_m=parse_tokens(",".join(map(str, self.cached_m)), "--cached-m"),
                       cached_L=parse_context(",".join(map(str, self.cached_L)), "--cached-L"))

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


SWEEPS = ("prefill", "decode", "cached")


def design_hash(design: ProfileDesign, identity: dict[str, Any]) -> str:
    """12 hex digits over the design and what else sets the numbers (model, GPU, TP, backend, argv)."""
    text = json.dumps({"design": design.to_json(), **identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prefill_isls(max_context_length: int, granularity: int) -> list[int]:
    """Dynamo's prefill ISLs: range(100, ctx - 512, (ctx - 612) // granularity)."""
    top = max_context_length - TEMPLATE_RESERVE
    if top <= PREFILL_MIN_ISL:
        raise ConfigError(f"a context of {max_context_length} tokens is too short to profile prefill (Dynamo "
                          f"keeps {TEMPLATE_RESERVE} for the template); raise --context-length above "
                          f"{PREFILL_MIN_ISL + TEMPLATE_RESERVE}")
    step = max((top - PREFILL_MIN_ISL) // granularity, 1)
    return list(range(PREFILL_MIN_ISL, top, step))


def num_request_range(max_concurrency: int, granularity: int, attn_dp: int = 1,
                      cap: int = DECODE_MAX_CONCURRENCY) -> list[int]:
    """Dynamo's get_num_request_range: `granularity` evenly spaced concurrencies from attn_dp up to the cap."""
    conc_per_dp = min(max_concurrency, cap) // attn_dp
    if conc_per_dp < granularity:
        return list(range(attn_dp, conc_per_dp * attn_dp + 1, attn_dp))
    step = (conc_per_dp - 1) / (granularity - 1)
    return [attn_dp + int(i * step) * attn_dp for i in range(granularity)]


def decode_isls(max_context_length: int, osl: int, granularity: int) -> list[int]:
    """Dynamo's decode ISLs: range(100, ctx - osl, (ctx - osl) // granularity)."""
    top = max_context_length - osl
    if top <= PREFILL_MIN_ISL:
        raise ConfigError(f"a context of {max_context_length} tokens leaves no decode ISL with OSL {osl}; "
                          f"lower --decode-osl or raise --context-length")
    return list(range(PREFILL_MIN_ISL, top, max(top // granularity, 1)))


def decode_points(max_context_length: int, max_kv_tokens: int, osl: int, granularity: int,
                  cap: int = DECODE_MAX_CONCURRENCY) -> list[tuple[int, int]]:
    """(isl, concurrency) pairs, ISL-major; concurrency up to the KV pool, max_kv_tokens // (isl + osl).

    Like Dynamo, the sweep stops at the first ISL at which not even one request fits the pool."""
    points: list[tuple[int, int]] = []
    for isl in decode_isls(max_context_length, osl, granularity):
        fits = max_kv_tokens // (isl + osl)
        if fits == 0:
            break
        points += [(isl, n) for n in num_request_range(fits, granularity, cap=cap)]
    return points


def x_kv_usage(isl: int, osl: int, concurrency: int, max_kv_tokens: int) -> float:
    """Dynamo's active-KV fraction: mean context (isl + osl / 2) x concurrency / pool."""
    return (isl + osl / 2) * concurrency / max_kv_tokens


def decode_context(isl: int, osl: int) -> float:
    """Dynamo's y_context_length: the mean context over a request's decode, isl + osl / 2."""
    return isl + osl / 2


def cached_points(ms: tuple[int, ...], Ls: tuple[int, ...], limit: int, max_new: int = 1) -> list[tuple[int, int]]:
    """(m, L) pairs, L-major, that fit the context: L + m + max_new <= limit (the others are clipped)."""
    return [(m, L) for L in Ls for m in ms if L + m + max_new <= limit]
