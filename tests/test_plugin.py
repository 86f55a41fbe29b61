"""The plugin as a user meets it: options, ini keys, grid ids, one-line errors."""

import pytest

SUITE = """
def test_append(ppd_point, ppd_path, ppd_measure):
    pass
"""


def test_help_lists_every_option_with_its_default(pytester):
    result = pytester.runpytest("--help")
    for opt in ("--ppd-backend", "--ppd-grid", "--ppd-model", "--ppd-gpu", "--ppd-reps", "--ppd-max-reps",
                "--ppd-ci", "--ppd-results", "--ppd-baseline", "--ppd-save-baseline", "--ppd-replay",
                "--ppd-url", "--ppd-resume"):
        result.stdout.fnmatch_lines([f"*{opt}*"])
    result.stdout.fnmatch_lines(["*(default: virtual)*", "*(default: smoke)*"])


def test_grid_becomes_readable_ids_on_both_paths(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--collect-only", "-q", "--ppd-grid=bs=1,16;L=4096;m=512")
    result.stdout.fnmatch_lines([
        "*test_append[[]bs1-L4096-m512-remote[]]", "*test_append[[]bs16-L4096-m512-remote[]]",
        "*test_append[[]bs1-L4096-m512-local[]]", "*test_append[[]bs16-L4096-m512-local[]]",
    ])


def test_remote_tests_run_first_then_plain_then_local(pytester):
    """One topology at a time, and a broken P/D setup fails first: every REMOTE test runs before any plain
    test (which measures on the LOCAL server), and those before every LOCAL test."""
    pytester.makepyfile(test_suite=SUITE + "\n\ndef test_plain(ppd_session):\n    pass\n")
    result = pytester.runpytest("--collect-only", "-q", "--ppd-grid=bs=1,2;L=8;m=1,2")
    ids = [line for line in result.stdout.lines if "test_suite.py::" in line]
    kinds = ["remote" if "remote" in i else "local" if "local" in i else "plain" for i in ids]
    assert kinds == ["remote"] * 4 + ["plain"] + ["local"] * 4


def test_k_selects_grid_points(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--collect-only", "-q", "--ppd-grid=full", "-k", "bs16 and L4096 and m512 and local")
    result.stdout.fnmatch_lines(["*1/336 tests collected*"])


def test_ini_keys_configure_and_cli_overrides(pytester):
    pytester.makeini("[pytest]\nppd_grid = bs=2;L=64;m=8\n")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*bs2-L64-m8-local*"])
    result = pytester.runpytest("--collect-only", "-q", "--ppd-grid=bs=3;L=64;m=8")
    result.stdout.fnmatch_lines(["*bs3-L64-m8-local*"])


def test_report_header_names_backend_model_gpu_and_grid(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--collect-only", "--ppd-grid=quick")
    result.stdout.fnmatch_lines(["ppd: backend=virtual model=Llama-3.1-8B gpu=H100-SXM grid=quick (18 points)*"])


BAD = [
    (["--ppd-backend=nope"], "--ppd-backend: 'nope' is not a backend; valid: virtual, sim, sglang, external, replay"),
    (["--ppd-grid=huge"], "--ppd-grid: 'huge' is not a grid; use a preset (smoke, quick, full, calibrate, seed002)*"),
    (["--ppd-grid=bs=1;L=10"], "--ppd-grid: grid 'bs=1;L=10' lacks m*"),
    (["--ppd-grid=bs=0;L=10;m=1"], "--ppd-grid: grid 'bs=0;L=10;m=1': bs=0 must be >= 1"),
    (["--ppd-grid=bs=-4;L=10;m=1"], "--ppd-grid: grid 'bs=-4;L=10;m=1': bs=-4 must be >= 1"),
    (["--ppd-grid=bs=1,1;L=10;m=1"], "--ppd-grid: grid 'bs=1,1;L=10;m=1': duplicate value in bs*"),
    (["--ppd-grid=bs=1;L=x;m=1"], "--ppd-grid: 'x' in grid 'bs=1;L=x;m=1' is not a list of integers*"),
    (["--ppd-grid=bs=;L=1;m=1"], "--ppd-grid: axis bs in grid 'bs=;L=1;m=1' has no values*"),
    (["--ppd-grid=bs=1;L=131000;m=512"], "--ppd-grid: 1 point(s) exceed Llama-3.1-8B's context length 131072*"),
    (["--ppd-model=gpt-5"], "--ppd-model: unknown model 'gpt-5'; known: *"),
    (["--ppd-gpu=TPU"], "--ppd-gpu: unknown GPU 'TPU'; known: *"),
    (["--ppd-prefill-gpu=TPU"], "--ppd-prefill-gpu: unknown GPU 'TPU'; known: *"),
    (["--ppd-backend=sglang", "--ppd-prefill-gpu=B200"], "--ppd-prefill-gpu: --ppd-backend=sglang starts P and D*"),
    (["--ppd-reps=0"], "--ppd-reps: 0 is out of range; give a int >= 1"),
    (["--ppd-reps=three"], "--ppd-reps: 'three' is not a number*"),
    (["--ppd-reps=5", "--ppd-max-reps=3"], "--ppd-max-reps: 3 is below --ppd-reps 5*"),
    (["--ppd-ci=0"], "--ppd-ci: 0.0 is out of range; give a float > 0"),
    (["--ppd-timeout=-1"], "--ppd-timeout: -1.0 is out of range; give a float > 0"),
    (["--ppd-backend=external"], "--ppd-backend=external needs --ppd-url*"),
    (["--ppd-backend=external", "--ppd-url=ftp://x"], "--ppd-url: 'ftp://x' must start with http:// or https://"),
    (["--ppd-backend=external", "--ppd-url=http://u:p@h:1"], "--ppd-url: credentials in the URL are refused*"),
    (["--ppd-backend=external", "--ppd-url=http://h:99999"], "--ppd-url: 'http://h:99999' has a port out of range*"),
    (["--ppd-backend=replay"], "--ppd-backend=replay needs --ppd-replay RECORDS.jsonl"),
    (["--ppd-max-reps=10000", "--ppd-grid=bs=16;L=1024;m=32"], "--ppd-max-reps: 10000 rounds x BS=16 * give "
     "--ppd-max-reps <= 7953"),
    (["--ppd-sim-args=--sim-fault=crash@1"], "--ppd-sim-args: --sim-fault needs served engines*--ppd-backend=sim"),
    (["--ppd-backend=replay", "--ppd-replay=/nonexistent.jsonl"], "--ppd-replay: /nonexistent.jsonl does not exist*"),
    (["--ppd-resume"], "--ppd-resume needs --ppd-results DIR*"),
    (["--ppd-results=../up"], "--ppd-results: '../up' contains '..'*"),
]


@pytest.mark.parametrize("args,line", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_usage_line(pytester, args, line, figures):
    """Each bad option gives exactly one line naming the option, exit code 4, no traceback."""
    tried = figures.setdefault("bad plugin inputs handled / tried", [0, len(BAD)])
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [ln for ln in result.stderr.lines if ln.strip()]
    assert len(errors) == 1, result.stderr.lines
    assert "Traceback" not in result.stderr.str() and "INTERNALERROR" not in result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: {line}"])
    tried[0] += 1


def test_results_path_that_is_a_file_is_refused(pytester):
    pytester.makepyfile(test_suite=SUITE)
    target = pytester.path / "afile"
    target.write_text("x")
    result = pytester.runpytest_subprocess(f"--ppd-results={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --ppd-results: * is a file; give a directory"])
