"""The ``ppd`` command: serve, validate, report, compare, calibrate, predict, profile, microbench, cluster,
import-table, reap.

    ppd serve --backend sim --topology pd          # prints one JSON line when healthy
    ppd serve --backend sglang --topology pd --dry-run
    ppd report DIR / ppd compare DIR BASELINE      # rebuild reports / gate a run offline
    ppd calibrate RECORDS -o PROFILE               # fit the sim's cost profile
    ppd predict --profile default --points "8,4096,512"
    ppd profile --model Llama-3.1-8B --gpu H100 -o prof/   # Dynamo's sweeps + cached context (virtual time)
    ppd microbench -o h100.json                    # GPU ceilings for `ppd calibrate --caps`
    ppd cluster --gpus 8 --strategy static --workload multiturn --rate 20   # a cluster study (virtual time)
    ppd import-table CSV -o records.jsonl          # a published table, re-proven
    ppd reap                                       # stop servers a crashed run left behind
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from pytest_ppd.config import api_key_from_env
from pytest_ppd.errors import ConfigError, PpdError, ServerLaunchError
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_LINK, DEFAULT_MODEL

EXIT_USAGE = 2
DEFAULT_EXPECTATIONS = Path("suites") / "expectations"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number; use 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range; use 1-65535")
    return port


class _TermAsInterrupt:
    """SIGTERM behaves like Ctrl-C, so every finally block and context manager runs."""

    def __enter__(self) -> None:
        def raise_interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        self._old = signal.signal(signal.SIGTERM, raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._old)


def cmd_serve(args: argparse.Namespace) -> int:
    from pytest_ppd.servers.topology import TopologyConfig, plan, start

    cfg = TopologyConfig(
        backend=args.backend, kind=args.topology, host=args.host, port=args.port, model=args.model,
        gpu=args.gpu, prefill_gpu=args.prefill_gpu, link=args.link, tp_size=args.tp_size, share_gpu=args.share_gpu,
        transfer_backend=args.transfer_backend, api_key=api_key_from_env(),
        sim_flags=tuple(args.sim_flag or ()),
        text=True, tokenizer=args.tokenizer,  # text prompts and /v1/* for every client (the grid keeps input_ids)
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote_bind:
        raise ConfigError(f"--host {args.host} would expose servers beyond this machine; "
                          "use 127.0.0.1 or add --allow-remote-bind")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ppd-serve-"))
    topo = plan(cfg, workdir)
    if args.dry_run:
        from pytest_ppd.servers.commands import mask_secrets

        for argv in topo.argvs():
            print(json.dumps(mask_secrets(argv)))
        return 0
    with _TermAsInterrupt():
        try:
            start(topo)
            print(json.dumps(topo.urls()), flush=True)
            while True:
                dead = topo.dead()
                if dead:
                    names = ", ".join(p.name for p in dead)
                    print(f"error: {names} exited; stopping the topology. Last log lines:\n{dead[0].tail()}",
                          file=sys.stderr)
                    return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        finally:
            topo.stop()


def cmd_reap(args: argparse.Namespace) -> int:
    from pytest_ppd.servers.process import reap, tagged_processes

    found = tagged_processes(args.token)
    if not found:
        print("no pytest-ppd server processes found")
        return 0
    for pid, role, cmd in found:
        print(f"{pid:>8}  {role:<10} {cmd[:120]}")
    if args.list:
        return 0
    reap(args.token)
    left = tagged_processes(args.token)
    print(f"stopped {len(found) - len(left)} process(es); {len(left)} left")
    return 0 if not left else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from pytest_ppd.client.validate import run_validate
    from pytest_ppd.config import parse_url

    checks = run_validate(parse_url(args.url, "--url"), api_key_from_env())
    for check in checks:
        print(check.line())
    return 0 if all(c.ok for c in checks) else 1


def cmd_import_table(args: argparse.Namespace) -> int:
    from pytest_ppd.importer import records_from_table, write_records

    records = records_from_table(args.table, args.model, args.gpu)
    write_records(records, Path(args.output))
    below = sum("floor" in rec.invalid_kinds for rec in records)
    over = sum("capacity" in rec.invalid_kinds for rec in records)
    print(f"{len(records)} rows -> {args.output}: {below} below the physical floor, {over} beyond the KV pool")
    return 0


def _results_dir(text: str) -> Path:
    from pytest_ppd.records import RECORDS_FILE

    directory = Path(text)
    if not (directory / RECORDS_FILE).is_file():
        raise ConfigError(f"{directory} holds no {RECORDS_FILE}; give a --ppd-results directory of a run")
    return directory


def cmd_report(args: argparse.Namespace) -> int:
    from pytest_ppd.report.files import build_report

    for path in build_report(_results_dir(args.dir)):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    expectations = args.expectations
    if expectations is None and DEFAULT_EXPECTATIONS.is_dir():
        expectations = str(DEFAULT_EXPECTATIONS)
    from pytest_ppd.baseline import compare_dir

    findings = compare_dir(_results_dir(args.dir), Path(args.baseline), Path(expectations) if expectations else None)
    kinds = [f.kind for f in findings]
    for f in sorted(findings, key=lambda f: f.kind == "regression"):
        print(f"REGRESSION {f.text}" if f.kind == "regression" else f.text)
    print(f"{kinds.count('regression')} regression(s), {kinds.count('improvement')} improvement(s), "
          f"{len(findings)} comparisons")
    return 1 if "regression" in kinds else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pytest_ppd.sim.predict import parse_points, predict

    for row in predict(parse_points(args.points), args.model, args.gpu, profile=args.profile,
                       chunked_prefill_size=args.chunked_prefill_size):
        print(json.dumps(row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pytest_ppd.servers.commands import TRANSFER_BACKENDS
    from pytest_ppd.servers.topology import TOPOLOGIES
    from pytest_ppd.specs import known_gpus, known_links, known_models

    parser = argparse.ArgumentParser(prog="ppd", description="pytest-ppd: SGLang P/D append-prefill benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start a topology and serve until SIGINT/SIGTERM")
    serve.add_argument("--backend", choices=("sim", "sglang"), default="sim", help="(default: sim)")
    serve.add_argument("--topology", choices=TOPOLOGIES, default="pd", help="(default: pd)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=30000, help="router or colocated port (default: 30000)")
    serve.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"built-in ({', '.join(known_models())}) or a model directory (default: {DEFAULT_MODEL})")
    serve.add_argument("--gpu", default=DEFAULT_GPU, help=f"{', '.join(known_gpus())} (default: {DEFAULT_GPU})")
    serve.add_argument("--prefill-gpu", default=None, metavar="GPU",
                       help="sim pd: the prefill engine's GPU, when it differs from --gpu (default: --gpu)")
    serve.add_argument("--link", default=DEFAULT_LINK, help=f"{', '.join(known_links())} (default: {DEFAULT_LINK})")
    serve.add_argument("--tp-size", type=int, default=1, help="(default: 1)")
    serve.add_argument("--share-gpu", action="store_true",
                       help="pd on one GPU: prefill at --mem-fraction-static 0.45, then decode at 0.8 of what is left "
                            "(sglang; the sim models the same memory) (default: off)")
    serve.add_argument("--transfer-backend", default="auto", choices=TRANSFER_BACKENDS,
                       help="P/D KV transfer; auto: mooncake with an RDMA device, else mooncake_tcp (default: auto)")
    serve.add_argument("--tokenizer", default=None, metavar="DIR",
                       help="Hugging Face tokenizer directory the engines tokenize with (default: the model "
                            "directory's, else for the sim a built-in stand-in; sglang needs one for text)")
    serve.add_argument("--sim-flag", action="append", metavar="FLAG",
                       help="extra --sim-* flag for every sim engine, e.g. --sim-flag=--sim-slowdown=1.2")
    serve.add_argument("--workdir", default=None, help="model dir and logs (default: a new temp dir)")
    serve.add_argument("--allow-remote-bind", action="store_true", help="permit a non-loopback --host")
    serve.add_argument("--dry-run", action="store_true", help="print each process's argv as JSON and exit")
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a deployment: health, model, streaming, cache proof")
    validate.add_argument("--url", required=True, help="router or engine base URL, e.g. http://127.0.0.1:30000")
    validate.set_defaults(func=cmd_validate)

    rep = sub.add_parser("report", help="rebuild results.json, summary.csv, report.md and plots from records.jsonl")
    rep.add_argument("dir")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser("compare", help="compare a results directory to a baseline; exit 1 on regression")
    cmp_.add_argument("dir")
    cmp_.add_argument("baseline")
    cmp_.add_argument("--expectations", metavar="DIR", default=None,
                      help="tolerances from its [baseline] sections (default: ./suites/expectations if present)")
    cmp_.set_defaults(func=cmd_compare)

    imp = sub.add_parser("import-table", help="a published latency table (CSV: bs,L,m,latency_ms) as records")
    imp.add_argument("table")
    imp.add_argument("-o", "--output", required=True)
    imp.add_argument("--model", default=DEFAULT_MODEL)
    imp.add_argument("--gpu", default=DEFAULT_GPU)
    imp.set_defaults(func=cmd_import_table)

    from pytest_ppd import calibrate_cmd

    cal = sub.add_parser("calibrate", help="fit the sim's cost profile to measured LOCAL rounds")
    calibrate_cmd.add_arguments(cal)
    cal.set_defaults(func=calibrate_cmd.cmd_calibrate)

    from pytest_ppd import microbench, profile
    from pytest_ppd.cluster import cli as cluster_cli

    clu = sub.add_parser("cluster", help="a cluster study in virtual time: N GPUs, a deployment or strategy, a load")
    cluster_cli.add_arguments(clu)
    clu.set_defaults(func=cluster_cli.cmd_cluster)

    prof = sub.add_parser("profile", help="Dynamo-compatible prefill/decode sweeps plus the cached-context sweep")
    profile.add_arguments(prof)
    prof.set_defaults(func=profile.cmd_profile)

    mb = sub.add_parser("microbench", help="GEMM, HBM, attention and launch ceilings of this GPU (needs CUDA)")
    microbench.add_arguments(mb)
    mb.set_defaults(func=microbench.cmd_microbench)

    pred = sub.add_parser("predict", help="the sim's engine-side latency of batched appends (one JSON line each)")
    pred.add_argument("--profile", default="default", help="cost profile JSON, or 'default' (the built-in)")
    pred.add_argument("--model", default=DEFAULT_MODEL, help=f"(default: {DEFAULT_MODEL})")
    pred.add_argument("--gpu", default=DEFAULT_GPU, help=f"(default: {DEFAULT_GPU})")
    pred.add_argument("--points", required=True, help="'BS,L,M;BS,L,M;...', e.g. '1,4096,32;8,4096,512'")
    pred.add_argument("--chunked-prefill-size", type=int, default=None, help="(default: SGLang's for the GPU)")
    pred.set_defaults(func=cmd_predict)

    reap_p = sub.add_parser("reap", help="stop servers a crashed run left behind")
    reap_p.add_argument("--token", default=None, help="only this run's token (default: every run)")
    reap_p.add_argument("--list", action="store_true", help="list, do not stop")
    reap_p.set_defaults(func=cmd_reap)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"ppd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerLaunchError as exc:
        print(f"ppd {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except PpdError as exc:
        print(f"ppd {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
