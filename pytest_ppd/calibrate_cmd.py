"""`ppd calibrate`: fit the sim's cost profile to measured LOCAL rounds, from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pytest_ppd.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="+", help="records.jsonl files (or results directories)")
    parser.add_argument("-o", "--output", required=True, help="profile JSON to write")
    parser.add_argument("--no-cross-validation", action="store_true",
                        help="skip the refits that estimate the error on unseen points (default: run them)")
    parser.add_argument("--caps", metavar="MICROBENCH_JSON", default=None,
                        help="efficiency ceilings measured on that GPU by `ppd microbench`")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pytest_ppd.baseline import write_atomic
    from pytest_ppd.records import RecordStore
    from pytest_ppd.sim.calibrate import FITTED, calibrate

    out = Path(args.output)  # checked before the fit, not after it
    if out.is_dir():
        raise ConfigError(f"-o {out} is a directory; name the profile file, e.g. {out / 'profile.json'}")
    if not out.parent.resolve().is_dir():
        raise ConfigError(f"-o {out}: no directory {out.parent}; create it or name another file")
    rounds = []
    for name in args.records:
        path = Path(name)
        if path.is_dir():
            path = path / "records.jsonl"
        if not path.is_file():
            raise ConfigError(f"{name}: no such records file (give records.jsonl or the results directory holding it)")
        rounds += RecordStore.read(path).rounds
    needed = ("bs", "L", "m", "path", "valid", "model", "gpu", "batch_latency_ms")
    unusable = [k for k in needed if rounds and any(k not in r for r in rounds)]
    if unusable:
        raise ConfigError(f"records lack {', '.join(unusable)}; a round needs {', '.join(needed)} "
                          "(records.jsonl as pytest-ppd writes it)")
    caps = None
    if args.caps:
        from pytest_ppd.microbench import load_caps

        caps = load_caps(args.caps)
    profile, fit = calibrate(rounds, validate=not args.no_cross_validation, caps=caps)
    payload = {"coefficients": dataclasses.asdict(profile), "fit": fit.as_dict(), "records": list(args.records)}
    try:
        write_atomic(out, json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write -o {out}: {exc.strerror}") from None
    for line in fit.report_lines(profile, FITTED):
        print(line)
    print(f"profile -> {out}  (use it: --ppd-sim-args=\"--sim-profile={out}\" "
          f"or ppd serve --sim-flag=--sim-profile={out})")
    return 0
