"""Fault injection for the reliability tests: `--sim-fault KIND@N[+][:ARG]` (repeatable).

N counts /generate requests from 1; `N+` means the N-th and every later one.

    crash@N          the process exits on the N-th request (no response)
    stall@N:S        response headers, then no bytes for S seconds
    http500@N        HTTP 500 with SGLang's error body
    truncate@N       the stream stops after its first chunk, without [DONE]
    malformed@N      the stream sends a chunk that is not JSON
    sse-error@N      HTTP 200, an SSE error event, then [DONE] (SGLang's failure after the stream started)
    kv-fail@N        decode side: the room's KV never arrives (transfer failure)
    slow-kv@N:F      decode side: the KV transfer takes F times longer
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_ppd.errors import ConfigError

KINDS = ("crash", "stall", "http500", "truncate", "malformed", "sse-error", "kv-fail", "slow-kv")
_SPEC = re.compile(r"^(?P<kind>[a-z0-9-]+)@(?P<n>\d+)(?P<plus>\+)?(?::(?P<arg>[0-9.]+))?$")


@dataclass(frozen=True)
class Fault:
    kind: str
    n: int
    onward: bool = False
    arg: float = 0.0

    def hits(self, request_no: int) -> bool:
        return request_no == self.n or (self.onward and request_no >= self.n)


def parse_fault(text: str) -> Fault:
    match = _SPEC.match(text.strip())
    if not match or match["kind"] not in KINDS:
        raise ConfigError(f"--sim-fault '{text}': use KIND@N[+][:ARG] with KIND one of {', '.join(KINDS)}")
    kind, arg = match["kind"], float(match["arg"]) if match["arg"] else 0.0
    if kind in ("stall", "slow-kv") and arg <= 0:
        raise ConfigError(f"--sim-fault '{text}': {kind} needs a positive :ARG (seconds or factor)")
    if int(match["n"]) < 1:
        raise ConfigError(f"--sim-fault '{text}': N counts requests from 1")
    return Fault(kind, int(match["n"]), bool(match["plus"]), arg)


@dataclass
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    def active(self, request_no: int) -> dict[str, Fault]:
        return {f.kind: f for f in self.faults if f.hits(request_no)}
