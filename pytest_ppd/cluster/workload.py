"""Cluster workloads: seeded request streams in the Mooncake trace's terms (lengths, 512-token blocks, times).

    trace = generate(WORKLOADS["chat"], requests=200, rate=8.0, seed=1)
    trace.requests[0]    # TraceRequest(input_length=1931, output_length=96, hash_ids=(0, 1, 2, 40, 41), ...)

What a spec draws, each from its own seeded stream (so a change of rate keeps the same prompts):
- arrivals of sessions at ``rate / turns`` per second: Poisson (exponential gaps) or gamma gaps with the
  coefficient of variation ``cv`` (bursty above 1), at whole milliseconds, the first at 0;
- per session a turn count (geometric with mean ``turns``), a shared system prompt (``groups`` of them,
  zipf-popular with exponent ``zipf_s``; ``system_tokens`` whole blocks), a first prompt (log-normal with
  mean ``prompt_mean``) and per turn an output length (log-normal, mean ``output_mean``);
- later turns resend the conversation: input = previous input + previous output + ``append_mean`` new
  tokens (log-normal), sent ``think_s`` (exponential) after the previous answer; a session ends early
  when its next input would pass ``max_input``.

Blocks: a request's ``hash_ids`` has one id per 512 tokens of its input; a later turn keeps every id of
the previous turn (its last, partial block included) and adds fresh ones, so its prompt extends the
previous one token for token (trace.py turns ids into tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pytest_ppd.errors import ConfigError

BLOCK_TOKENS = 512  # Mooncake's hash block
ARRIVALS = ("poisson", "gamma")


@dataclass(frozen=True)
class TraceRequest:
    """One request, as a line of a Mooncake trace holds it (times in ms)."""

    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    timestamp_ms: int | None = None  # when it is sent: single requests and first turns
    session_id: str | None = None
    delay_ms: int | None = None  # later turns: after the previous turn's last token


@dataclass(frozen=True)
class Trace:
    """A workload, ready to replay: requests in file order (a session's turns in turn order)."""

    name: str
    requests: tuple[TraceRequest, ...]
    block_tokens: int = BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def sessions(self) -> int:
        return len({r.session_id for r in self.requests if r.session_id is not None})


@dataclass(frozen=True)
class WorkloadSpec:
    """What to draw (see the module docstring); ``rate`` is requests per second, sessions included."""

    name: str
    requests: int = 100
    rate: float = 4.0
    arrival: str = "poisson"
    cv: float = 1.0
    prompt_mean: float = 400.0
    prompt_sigma: float = 0.8
    output_mean: float = 150.0
    output_sigma: float = 0.6
    turns: float = 1.0
    think_s: float = 0.0
    append_mean: float = 120.0
    groups: int = 0
    system_tokens: int = 1024
    zipf_s: float = 1.1
    max_input: int = 16384
    seed: int = 0

    def check(self) -> None:
        """Raise one ConfigError naming the fix for the first bad field."""
        bad = [
            (self.requests < 1, f"requests must be >= 1, got {self.requests}"),
            (not self.rate > 0, f"rate must be > 0 requests/s, got {self.rate}"),
            (self.arrival not in ARRIVALS, f"arrival '{self.arrival}' is not one of {', '.join(ARRIVALS)}"),
            (not self.cv > 0, f"cv (gamma arrivals) must be > 0, got {self.cv}"),
            (min(self.prompt_mean, self.output_mean, self.append_mean) < 1,
             "prompt_mean, output_mean and append_mean must be >= 1 token"),
            (min(self.prompt_sigma, self.output_sigma) < 0, "log-normal sigmas must be >= 0"),
            (self.turns < 1, f"turns (mean per session) must be >= 1, got {self.turns}"),
            (self.think_s < 0, f"think_s must be >= 0, got {self.think_s}"),
            (self.groups < 0, f"groups must be >= 0, got {self.groups}"),
            (self.groups > 0 and (self.system_tokens < BLOCK_TOKENS or self.system_tokens % BLOCK_TOKENS),
             f"system_tokens must be a positive multiple of {BLOCK_TOKENS} (whole blocks are what a trace "
             f"shares), got {self.system_tokens}"),
            (self.zipf_s < 0, f"zipf_s must be >= 0, got {self.zipf_s}"),
            (self.max_input < self.system_tokens * (self.groups > 0) + 2,
             f"max_input ({self.max_input}) leaves no room for a prompt"),
        ]
        for wrong, message in bad:
            if wrong:
                raise ConfigError(f"workload {self.name}: {message}")


# Seed 003's workload and the variants the cluster suites need (a plain dict keyed by name).
WORKLOADS: dict[str, WorkloadSpec] = {
    "seed003": WorkloadSpec("seed003"),
    "multiturn": WorkloadSpec("multiturn", turns=6.0, think_s=1.0, prompt_mean=400.0, append_mean=120.0),
    "sysprompt": WorkloadSpec("sysprompt", groups=8, system_tokens=1536),
    "chat": WorkloadSpec("chat", turns=4.0, think_s=1.0, groups=8, system_tokens=1024),
    "prefill-heavy": WorkloadSpec("prefill-heavy", prompt_mean=3000.0, prompt_sigma=0.4, output_mean=24.0,
                                  output_sigma=0.3),
    "decode-heavy": WorkloadSpec("decode-heavy", prompt_mean=150.0, prompt_sigma=0.4, output_mean=600.0,
                                 output_sigma=0.3),
}


def workload_spec(name: str, **overrides: Any) -> WorkloadSpec:
    """A preset by name with fields replaced (``None`` values keep the preset's), checked."""
    if name not in WORKLOADS:
        raise ConfigError(f"'{name}' is not a workload; valid: {', '.join(WORKLOADS)} (or --trace FILE)")
    spec = replace(WORKLOADS[name], **{k: v for k, v in overrides.items() if v is not None})
    spec.check()
    return spec


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, size: int) -> np.ndarray:
    """Log-normal draws with the given mean (not median): mu = ln(mean) - sigma^2 / 2."""
    return rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, size)


def _gaps_s(spec: WorkloadSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    rate = spec.rate / spec.turns  # sessions per second
    if spec.arrival == "poisson":
        return rng.exponential(1.0 / rate, n)
    shape = 1.0 / (spec.cv * spec.cv)
    return rng.gamma(shape, 1.0 / (rate * shape), n)


class _Blocks:
    """Hands out hash ids: system prompts own the first ones, every other block is fresh."""

    def __init__(self, groups: int, per_group: int) -> None:
        self.per_group, self.next = per_group, groups * per_group

    def system(self, group: int) -> list[int]:
        return list(range(group * self.per_group, (group + 1) * self.per_group))

    def extend(self, ids: list[int], tokens: int) -> tuple[int, ...]:
        need = -(-tokens // BLOCK_TOKENS)
        while len(ids) < need:
            ids.append(self.next)
            self.next += 1
        return tuple(ids)


def generate(spec: WorkloadSpec, *, requests: int | None = None, rate: float | None = None,
             seed: int | None = None) -> Trace:
    """The trace a spec draws (the keyword arguments override its fields); deterministic per seed."""
    spec = replace(spec, requests=spec.requests if requests is None else requests,
                   rate=spec.rate if rate is None else rate, seed=spec.seed if seed is None else seed)
    spec.check()
    arrivals, sizes, shapes, groups = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(4))
    n = spec.requests  # sessions are at most one per request
    starts_ms = np.rint(np.concatenate(([0.0], np.cumsum(_gaps_s(spec, arrivals, n - 1)))) * 1e3).astype(int)
    turns = shapes.geometric(1.0 / spec.turns, n) if spec.turns > 1 else np.ones(n, dtype=int)
    thinks_ms = np.rint(shapes.exponential(spec.think_s, n) * 1e3).astype(int) if spec.think_s else np.zeros(n, int)
    popularity = 1.0 / np.arange(1, spec.groups + 1) ** spec.zipf_s if spec.groups else None
    system = spec.system_tokens if spec.groups else 0
    blocks = _Blocks(spec.groups, system // BLOCK_TOKENS)
    firsts = np.maximum(np.rint(_lognormal(sizes, spec.prompt_mean, spec.prompt_sigma, n)), 1).astype(int)
    outs = np.maximum(np.rint(_lognormal(sizes, spec.output_mean, spec.output_sigma, n)), 1).astype(int)
    appends = np.maximum(np.rint(_lognormal(sizes, spec.append_mean, spec.prompt_sigma, n)), 1).astype(int)
    out: list[TraceRequest] = []
    session = 0
    while len(out) < n:
        group = int(groups.choice(spec.groups, p=popularity / popularity.sum())) if popularity is not None else 0
        ids = blocks.system(group) if spec.groups else []
        sid = f"s{session}" if spec.turns > 1 else None
        length = min(system + int(firsts[session]), spec.max_input - 1)
        for turn in range(int(turns[session])):
            k = len(out)
            output = min(int(outs[k]), spec.max_input - length)
            if turn and (output < 1 or length > spec.max_input - 1):
                break
            out.append(TraceRequest(length, output, blocks.extend(ids, length),
                                    timestamp_ms=None if turn else int(starts_ms[session]),
                                    session_id=sid, delay_ms=int(thinks_ms[k]) if turn else None))
            if len(out) == n:
                break
            length += output + int(appends[k])
        session += 1
    return Trace(spec.name, tuple(out))
