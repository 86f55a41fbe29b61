#!/usr/bin/env python
"""Check an argv for `python -m sglang.launch_server` with SGLang's own code,
without starting a server and without a GPU (SGLang 0.5.23).

Usage (run with the venv's python, one argv per process):
    $PPD_SGLANG_PYTHON tests/support/check_sglang_argv.py [checker opts] -- <launch_server argv...>

Checker options (before the `--`):
    --parse-only        stop after argparse (step 1); no fake GPU needed at all
    --allow-abbrev      accept argparse prefix abbreviations (launch_server does);
                        default: an abbreviated flag is reported as an error
    --gpu-mem-mib N     total memory per fake GPU, MiB (default 81559 = H100 80GB nvidia-smi)
    --gpu-cap M.m       fake compute capability (default 9.0 = Hopper)
    --gpu-count N       fake visible GPU count (default 8)
    --gpu-name S        fake device name (default "NVIDIA H100 80GB HBM3")
    --no-flashinfer     behave as if flashinfer were not installed (default: installed)
    --minimal-stub      do NOT fake a GPU; stub only the one hard probe (get_device() in
                        handle_missing_default_values, used when --device is absent).
                        Validation still runs, but hardware-dependent defaults come out
                        as on a GPU-less box (triton attention, mem_fraction 0.95, ...)
    --dump              print every resolved field (resolved_dict) as JSON

Exit codes: 0 accepted, 2 rejected by argparse (unknown flag, bad choice/type),
1 rejected by SGLang's resolution/validation, 3 abbreviated flag (strict mode),
4 checker limitation (a CUDA-only module was needed; not a verdict on argv).

Code path reproduced (sglang/launch_server.py __main__ -> run_server ->
http_server.launch_server -> Engine._launch_subprocesses):
    load_plugins(); sa = prepare_server_args(argv)        # argparse + ServerArgs.from_cli_args
    sa.resolve_once()                                     # run_resolution_pipeline: all cross-flag checks
    sa.check_server_args(); resolve_auto_parsers(sa)      # done in Engine before publish
(In 0.5.23 ServerArgs.__post_init__ is empty; all checks live in resolve_once.)
Stopped before: _set_envs_and_config, PortArgs, process spawning, model loading.

Only the hardware probes are faked, and only after SGLang's modules were imported
on the honest CPU torch (so no CUDA-only module such as sgl_kernel is imported):
    torch.cuda.is_available/device_count/get_device_capability/get_device_name/
    get_device_properties/mem_get_info/is_initialized, torch.version.cuda,
    sglang.srt.utils.common.get_nvgpu_memory_capacity (nvidia-smi probe),
    sglang.srt.utils.common.is_flashinfer_available (unless --no-flashinfer),
    and the lru_caches of sglang.srt.utils.common's probes are cleared.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import types
import warnings

SUMMARY_FIELDS = [
    "model_path", "device", "host", "port", "disaggregation_mode",
    "disaggregation_transfer_backend", "disaggregation_bootstrap_port",
    "tp_size", "dp_size", "base_gpu_id", "mem_fraction_static",
    "chunked_prefill_size", "max_running_requests", "max_total_tokens",
    "page_size", "context_length", "load_format", "skip_tokenizer_init",
    "enable_metrics", "attention_backend", "prefill_attention_backend",
    "decode_attention_backend", "sampling_backend", "grammar_backend",
    "disable_radix_cache", "cuda_graph_max_bs", "schedule_policy",
]


def _checker_opts(argv):
    if "--" in argv:
        i = argv.index("--")
        own, launch = argv[:i], argv[i + 1:]
    else:
        own, launch = [], argv
    p = argparse.ArgumentParser(prog="check_argv.py", allow_abbrev=False)
    p.add_argument("--parse-only", action="store_true")
    p.add_argument("--allow-abbrev", action="store_true")
    p.add_argument("--gpu-mem-mib", type=int, default=81559)
    p.add_argument("--gpu-cap", default="9.0")
    p.add_argument("--gpu-count", type=int, default=8)
    p.add_argument("--gpu-name", default="NVIDIA H100 80GB HBM3")
    p.add_argument("--no-flashinfer", action="store_true")
    p.add_argument("--minimal-stub", action="store_true")
    p.add_argument("--dump", action="store_true")
    return p.parse_args(own), launch


def _preimport_sglang():
    """Import everything resolution touches while torch still says 'no CUDA'."""
    import sglang.srt.arg_groups as ag

    for m in pkgutil.walk_packages(ag.__path__, ag.__name__ + "."):
        importlib.import_module(m.name)
    for name in (
        "sglang.srt.arg_groups.pipeline",
        "sglang.srt.kernel_plugins.amd.binding",
        "sglang.srt.kernel_plugins.nvidia.binding",
        "sglang.srt.parser.template_detection",
        "sglang.srt.speculative.spec_info",
        "sglang.srt.sampling.watermarking.core",
    ):
        importlib.import_module(name)


def install_fake_gpu(mem_mib=81559, cap=(9, 0), count=8, name="NVIDIA H100 80GB HBM3",
                     flashinfer=True):
    """Fake only the device *queries*; nothing is allocated or launched."""
    import torch
    from sglang.srt.utils import common

    total = mem_mib << 20
    props = types.SimpleNamespace(
        name=name, total_memory=total, major=cap[0], minor=cap[1],
        multi_processor_count=132, uuid="GPU-00000000-0000-0000-0000-000000000000",
        L2_cache_size=50 << 20, gcnArchName="", is_integrated=False, warp_size=32,
    )
    c = torch.cuda
    c.is_available = lambda: True
    c.is_initialized = lambda: False  # keeps get_device_sm on its NVML->torch path
    c.device_count = lambda: count
    c.get_device_capability = lambda device=None: cap
    c.get_device_name = lambda device=None: name
    c.get_device_properties = lambda device=None: props
    c.mem_get_info = lambda device=None: (total - (1 << 30), total)
    torch.version.cuda = torch.version.cuda or "12.9"
    # nvidia-smi probe used by get_device_memory_capacity -> mem_fraction_static etc.
    common.get_nvgpu_memory_capacity = lambda: float(mem_mib)
    for f in list(vars(common).values()):  # is_cuda(), is_sm90_supported(), ... are lru_cached
        if callable(getattr(f, "cache_clear", None)):
            f.cache_clear()
    if flashinfer:  # a real install has flashinfer (hard dep); it picks sampling_backend etc.
        common.is_flashinfer_available = lambda: True


def _abbreviations(parser, argv):
    bad = []
    exact = parser._option_string_actions
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            flag = tok.split("=", 1)[0]
            if flag not in exact:
                bad.append(flag)
    return bad


def check_launch_argv(argv, *, parse_only=False, allow_abbrev=False, fake_gpu=None, dump=False,
                      minimal_stub=False):
    """Returns (exit_code, report dict). Run it once per process."""
    warnings.filterwarnings("ignore")
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import ServerArgs, prepare_server_args

    load_plugins()  # as launch_server.__main__ does
    rep = {"argv": list(argv)}
    # Step 1: SGLang's own argparse parser (prog "sglang serve"), exactly as launch_server.
    import contextlib
    import io

    err = io.StringIO()  # argparse prints the (very long) usage text before the error line
    try:
        with contextlib.redirect_stderr(err):
            sa = prepare_server_args(list(argv))
    except SystemExit as e:
        lines = [line for line in err.getvalue().splitlines() if ": error: " in line]
        rep.update(ok=False, stage="argparse",
                   error=lines[-1] if lines else f"argparse exit {e.code}: {err.getvalue()[-2000:]}")
        return 2, rep
    sys.stderr.write(err.getvalue())
    if not allow_abbrev:
        p = argparse.ArgumentParser(prog="sglang serve")
        ServerArgs.add_cli_args(p)
        bad = _abbreviations(p, argv)
        if bad:
            rep.update(ok=False, stage="strict", error=f"abbreviated/non-exact flags: {bad}")
            return 3, rep
    if parse_only:
        rep.update(ok=True, stage="argparse")
        return 0, rep
    # Step 2: resolution + cross-flag validation, with faked hardware probes.
    _preimport_sglang()
    if minimal_stub:
        import sglang.srt.arg_groups.serving_hook as sh

        sh.get_device = lambda device_id=None: "cuda"
    else:
        install_fake_gpu(**(fake_gpu or {}))
    from sglang.srt.arg_groups.overrides import resolving_view

    stage = "resolve_once"
    try:
        # launch_server.run_server seeds tokenizer_path for gRPC before resolving
        if (sa.smg_grpc_mode or sa.grpc_mode) and sa.tokenizer_path is None:
            sa.tokenizer_path = sa.model_path
        sa.resolve_once()
        stage = "check_server_args"
        sa.check_server_args()
        stage = "resolve_auto_parsers"
        from sglang.srt.parser.template_detection import resolve_auto_parsers

        resolve_auto_parsers(sa)
    except ModuleNotFoundError as e:
        rep.update(ok=None, stage=stage, error=f"checker limitation: {e!r}")
        return 4, rep
    except (Exception, SystemExit) as e:
        rep.update(ok=False, stage=stage, error=f"{type(e).__name__}: {e}")
        return 1, rep
    view = resolving_view(sa)
    resolved = {}
    for k in SUMMARY_FIELDS:
        try:
            resolved[k] = getattr(view, k)
        except Exception:
            pass
    rep.update(ok=True, stage="done", resolved=resolved)
    if dump:
        rep["resolved_all"] = sa.resolved_dict()
    return 0, rep


def main():
    opts, launch = _checker_opts(sys.argv[1:])
    cap = tuple(int(x) for x in opts.gpu_cap.split("."))
    code, rep = check_launch_argv(
        launch,
        parse_only=opts.parse_only,
        allow_abbrev=opts.allow_abbrev,
        fake_gpu=dict(mem_mib=opts.gpu_mem_mib, cap=cap, count=opts.gpu_count, name=opts.gpu_name,
                      flashinfer=not opts.no_flashinfer),
        dump=opts.dump,
        minimal_stub=opts.minimal_stub,
    )
    verdict = {0: "ACCEPTED", 1: "REJECTED (validation)", 2: "REJECTED (argparse)",
               3: "REJECTED (abbreviated flag)", 4: "UNKNOWN (checker limitation)"}[code]
    print(verdict, "| stage:", rep.get("stage"))
    if rep.get("error"):
        print("error:", rep["error"])
    for k, v in rep.get("resolved", {}).items():
        print(f"  {k} = {v!r}")
    if opts.dump:
        print(json.dumps(rep.get("resolved_all"), indent=1, default=str))
    sys.stdout.flush()
    os._exit(code)  # skip atexit hooks of sglang/torch


if __name__ == "__main__":
    main()
