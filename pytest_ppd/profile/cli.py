"""`ppd profile`: its arguments and the command (wired into pytest_ppd/cli.py by its owner).

    parser = sub.add_parser("profile", help=...); add_arguments(parser); parser.set_defaults(func=cmd_profile)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, TypeVar

from pytest_ppd.config import api_key_from_env
from pytest_ppd.errors import ConfigError
from pytest_ppd.profile.plan import Target, plan
from pytest_ppd.profile.run import BACKENDS, ProfileResult, check_backend, run_profile
from pytest_ppd.profile.sweeps import SWEEPS, ProfileDesign, parse_context, parse_tokens
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL

T = TypeVar("T")
_D = ProfileDesign()


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type that keeps our message (argparse would replace a ValueError's with its own)."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{value} must be >= 1")
    return value


def _sweeps(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SWEEPS]
    if unknown or not names:
        raise ConfigError(f"'{text}': valid sweeps are {', '.join(SWEEPS)} (comma-separated)")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `ppd profile`; defaults are Dynamo 1.6.1's grids plus our cached-context grid."""
    count = _arg(_count)
    parser.add_argument("--backend", default="virtual", metavar="|".join(BACKENDS),
                        help="where to measure: virtual time, the served sim, SGLang on this node (one colocated "
                             "engine each), or an engine you run (--url) (default: virtual)")
    parser.add_argument("--url", default=None, help="--backend external: the SGLang engine to profile")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name or model directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"(default: {DEFAULT_GPU})")
    parser.add_argument("--tp", type=count, default=1, metavar="N", help="tensor-parallel GPUs per engine (default: 1)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="profile directory (resumed if it exists)")
    parser.add_argument("--context-length", type=count, default=None, metavar="N",
                        help="SGLang's --context-length; caps the sweeps (default: the model's)")
    parser.add_argument("--max-total-tokens", type=count, default=None, metavar="N",
                        help="SGLang's --max-total-tokens: a smaller KV pool (default: SGLang's for the GPU)")
    parser.add_argument("--sim-profile", default=None, metavar="PROFILE",
                        help="the simulated engine's cost profile: a JSON from ppd calibrate, dynamo:DIR to "
                             "interpolate a measured profile, or aic:SYSTEM:BACKEND for AIConfigurator's tables "
                             "(default: built-in)")
    parser.add_argument("--plan", type=_arg(Target.parse), action="append", default=[], metavar="SPEC",
                        help="replica counts for an SLA and load, Dynamo's and cache-aware, e.g. "
                             "ttft=300,itl=25,rate=20,isl=8000,osl=300,cached=0.8 (repeatable)")
    parser.add_argument("--sweeps", type=_arg(_sweeps), default=_D.sweeps, metavar="LIST",
                        help=f"which of {','.join(SWEEPS)} (default: all)")
    parser.add_argument("--prefill-granularity", type=count, default=_D.prefill_granularity, metavar="N",
                        help=f"prefill ISL steps, Dynamo's range (default: {_D.prefill_granularity})")
    parser.add_argument("--prefill-reps", type=count, default=_D.prefill_reps, metavar="N",
                        help=f"proven-cold requests per ISL; TTFT = their median (default: {_D.prefill_reps})")
    parser.add_argument("--decode-granularity", type=count, default=_D.decode_granularity, metavar="N",
                        help=f"decode ISL and concurrency steps (default: {_D.decode_granularity})")
    parser.add_argument("--decode-osl", type=count, default=_D.decode_osl, metavar="N",
                        help=f"output tokens per decode request (default: {_D.decode_osl}, Dynamo's)")
    parser.add_argument("--decode-max-concurrency", type=count, default=_D.decode_max_concurrency, metavar="N",
                        help=f"cap on decode concurrency (default: {_D.decode_max_concurrency}, Dynamo's)")
    parser.add_argument("--cached-m", type=_arg(lambda t: parse_tokens(t, "--cached-m")), default=_D.cached_m,
                        metavar="LIST", help=f"fresh tokens appended (default: {','.join(map(str, _D.cached_m))})")
    parser.add_argument("--cached-L", type=_arg(lambda t: parse_context(t, "--cached-L")), default=_D.cached_L,
                        metavar="LIST", help=f"cached context tokens (default: {','.join(map(str, _D.cached_L))})")
    parser.add_argument("--cached-reps", type=count, default=_D.cached_reps, metavar="N",
                        help=f"proven appends per (m, L) (default: {_D.cached_reps})")
    parser.add_argument("--seed", type=int, default=_D.seed, help=f"token ids (default: {_D.seed})")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: draw them)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (default: show it)")


def design_from_args(args: argparse.Namespace) -> ProfileDesign:
    return ProfileDesign(
        prefill_granularity=args.prefill_granularity, prefill_reps=args.prefill_reps,
        decode_granularity=args.decode_granularity, decode_osl=args.decode_osl,
        decode_max_concurrency=args.decode_max_concurrency, cached_m=tuple(args.cached_m),
        cached_L=tuple(args.cached_L), cached_reps=args.cached_reps, sweeps=tuple(args.sweeps), seed=args.seed,
    ).validate()


def _progress(sweep: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\rppd profile: {sweep} {done}/{total}", end="\n" if done == total else "", file=sys.stderr,
              flush=True)
    elif done == total:
        print(f"ppd profile: {sweep} {done}/{total} points", file=sys.stderr, flush=True)


def summary_lines(result: ProfileResult) -> list[str]:
    """What a reader wants at a glance: prefill TTFT over ISL, decode ITL's range, the cached-context table."""
    lines = []
    if result.prefill and result.prefill.isl:
        pre = result.prefill
        picks = sorted({0, len(pre.isl) // 2, len(pre.isl) - 1})
        lines.append("prefill TTFT: " + ", ".join(f"ISL {pre.isl[i]} -> {pre.ttft_ms[i]:.1f} ms" for i in picks))
    if result.decode and result.decode.z_itl:
        dec = result.decode
        lines.append(f"decode ITL: {min(dec.z_itl):.2f}..{max(dec.z_itl):.2f} ms over {len(dec.z_itl)} "
                     f"(ISL, concurrency) points; KV pool {dec.max_kv_tokens} tokens")
    if result.cached and result.cached.m:
        cached = result.cached
        lines.append("append TTFT ms (fresh m across, cached L down):")
        lines.append(f"{'L | m':>8}" + "".join(f"{m:>9}" for m in cached.m))
        for L, row in zip(cached.L, cached.ttft_ms):
            lines.append(f"{L:>8}" + "".join(f"{x:>9.1f}" if math.isfinite(x) else f"{'-':>9}" for x in row))
    return lines


def cmd_profile(args: argparse.Namespace) -> int:
    """Run the profile; 0 when every point was proven, 1 when some were not (they are listed, not recorded)."""
    check_backend(args.backend)
    result = run_profile(args.model, args.gpu, args.tp, Path(args.output), design=design_from_args(args),
                         backend=args.backend, context_length=args.context_length,
                         max_total_tokens=args.max_total_tokens, progress=None if args.quiet else _progress,
                         plots=not args.no_plots,
                         sim_flags=[f"--sim-profile={args.sim_profile}"] if args.sim_profile else [],
                         url=args.url, api_key=api_key_from_env())
    for line in summary_lines(result):
        print(line)
    for target in args.plan:
        for line in plan(result.out_dir, target, args.tp).lines(target):
            print(line)
    print(f"profile of {args.model} on {args.gpu} x{args.tp} ({args.backend}): {len(result.files)} files in "
          f"{result.out_dir} ({result.measured} points measured, {result.reused} reused)")
    for note in result.notes:
        print(f"note: {note}")
    for line in result.invalid:
        print(f"UNPROVEN {line}")
    if result.invalid:
        print(f"{len(result.invalid)} requests failed their proof and are left out of every table")
        return 1
    return 0
