"""pytest plugin: --ppd-* options, the grid as parametrized tests, server fixtures, summary.

Hooks stay thin; the state lives in one PpdSession kept in ``config.stash``.

A suite test asks for the grid and the measurement fixture::

    def test_append(ppd_point, ppd_path, ppd_measure):
        outcome = ppd_measure(ppd_point, ppd_path)   # fails if every round is invalid
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from pytest_ppd.client.runner import PointOutcome
from pytest_ppd import shard
from pytest_ppd.config import PATHS, build_config
from pytest_ppd.errors import ConfigError, PpdError
from pytest_ppd.grid import GRID_SYNTAX, GridPoint
from pytest_ppd.session import Infeasible, PpdSession
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_MODEL

if TYPE_CHECKING:
    from pytest_ppd.analysis.study import Study
    from pytest_ppd.expectations import GateSettings
    from pytest_ppd.expectations import Expectations

SESSION_KEY = pytest.StashKey[PpdSession]()
_OLD_SIGTERM = pytest.StashKey[Any]()

# name, metavar, default, help; each also an ini key ppd_<name with underscores>
OPTIONS: list[tuple[str, str, str | None, str]] = [
    ("backend", "NAME", "virtual", "virtual (modeled GPU time, in-process), sim (served engines behind the real "
     "sglang-router), sglang, external or replay"),
    ("grid", "GRID", "smoke", GRID_SYNTAX),
    ("model", "MODEL", DEFAULT_MODEL, "built-in model name or a path to a HF config.json / model dir"),
    ("gpu", "GPU", DEFAULT_GPU, "GPU the floor and the sim use (H100-SXM, H100-PCIe, H200, A100-80GB, B200, L40S)"),
    ("prefill-gpu", "GPU", "--ppd-gpu", "the prefill side's GPU when it differs (heterogeneous P/D; sim or "
     "external)"),
    ("reps", "N", "3", "minimum valid rounds per point and path"),
    ("max-reps", "N", "10", "maximum rounds per point and path"),
    ("ci", "FRACTION", "0.05", "stop repeating when the median's 95%% CI is this narrow (relative)"),
    ("timeout", "SECONDS", "600", "per-request timeout"),
    ("results", "DIR", None, "results directory (default: ppd-results/<time>-<backend>)"),
    ("baseline", "FILE", None, "compare the run to this baseline"),
    ("save-baseline", "FILE", None, "write a baseline of this run"),
    ("replay", "RECORDS", None, "records.jsonl the replay backend reads"),
    ("url", "URL", None, "external backend: URL (remote path) or local=URL,remote=URL"),
    ("expectations", "DIR", None, "expectations directory (default: expectations/ beside the suite module)"),
    ("benchmark-json", "FILE", None, "also write the measured points in pytest-benchmark's JSON format"),
    ("transfer-backend", "NAME", "auto", "P/D KV transfer: auto (mooncake with an RDMA device, else mooncake_tcp), "
     "mooncake, mooncake_tcp, nixl"),
    ("gpus-per-worker", "N", None, "with pytest-xdist (-n): GPUs each worker's servers get, from its worker "
     "number (sglang backend)"),
    ("sim-args", "ARGS", None,
     "extra --sim-* flags for every sim engine, e.g. '--sim-fault=crash@5 --sim-slowdown=1.2'"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ppd", "pytest-ppd: SGLang P/D append-prefill benchmarks")
    for name, metavar, default, help_ in OPTIONS:
        dest = "ppd_" + name.replace("-", "_")
        suffix = f" (default: {default})" if default is not None else ""
        group.addoption(f"--ppd-{name}", dest=dest, metavar=metavar, default=None, help=help_ + suffix)
        parser.addini(dest, help_ + suffix, default=None)
    group.addoption("--ppd-resume", dest="ppd_resume", action="store_true", default=None,
                    help="continue the run in --ppd-results, skipping points already measured (default: off)")
    parser.addini("ppd_resume", "continue the run in ppd_results (default: false)", type="bool", default=False)


def _raw_options(config: pytest.Config) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name, *_ in OPTIONS + [("resume",)]:  # type: ignore[list-item]
        dest = "ppd_" + name.replace("-", "_")
        value = config.getoption(dest)
        raw[dest[4:]] = value if value is not None else config.getini(dest)
    return raw


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ppd: a pytest-ppd measurement test")
    try:
        ppd_config = build_config(_raw_options(config))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    try:
        config.stash[SESSION_KEY] = shard.make_session(config, ppd_config, _raw_options(config).get("gpus_per_worker"))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None

    def term_as_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # pytest runs no finalizers on SIGTERM; it does on Ctrl-C

    try:
        config.stash[_OLD_SIGTERM] = signal.signal(signal.SIGTERM, term_as_interrupt)
    except ValueError:  # not the main thread
        pass


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
    old = config.stash.get(_OLD_SIGTERM, None)
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def pytest_sessionfinish(session: pytest.Session) -> None:
    ppd = session.config.stash.get(SESSION_KEY, None)
    if ppd is not None:
        ppd.close()
        if ppd.shard is not None:
            return  # a worker's share: the controller merges and reports
        if shard.merge_into(session.config, ppd):
            ppd.note(f"{len(ppd.outcomes)} point-paths from the xdist workers merged into {ppd.store_path}")
        saved = ppd.save_baseline()
        if saved is not None:
            ppd.note(f"baseline written: {saved}")
        if ppd.outcomes and ppd.config.benchmark_json is not None:
            from pytest_ppd.report.benchmark_json import write_benchmark_json

            written = write_benchmark_json(ppd.config.benchmark_json, ppd.outcomes, {"backend": ppd.config.backend})
            ppd.note(f"pytest-benchmark JSON: {written}")
        if ppd.outcomes and ppd.config.backend != "replay" and ppd.store_path is not None:
            from pytest_ppd.report.files import build_report

            try:
                build_report(ppd.results_dir, ppd.config.model, ppd.config.gpu)
                ppd.note(f"report: {ppd.results_dir / 'report.md'} (+ results.json, summary.csv, *.png)")
            except Exception as exc:  # a report failure must not hide the measurements
                ppd.note(f"report could not be built ({type(exc).__name__}: {exc}); run `ppd report "
                         f"{ppd.results_dir}` to retry")
        cluster = ppd.results_dir / "cluster"  # suites/test_cluster.py's per-setup reports, from any worker
        if cluster.is_dir():
            from pytest_ppd.cluster.compare import merge_reports

            merged = merge_reports(cluster)
            if merged is not None:
                ppd.note(f"cluster report: {merged} (+ comparison.json)")


def pytest_report_header(config: pytest.Config) -> str | list[str]:
    s = config.stash[SESSION_KEY]
    c = s.config
    v = s.versions()
    gpus = c.gpu.name if c.prefill_gpu is None else f"{c.gpu.name} prefill_gpu={c.prefill_gpu.name}"
    if c.backend in ("sim", "sglang"):
        gpus += f" transfer={c.transfer_backend}"
    header = (f"ppd: backend={c.backend} model={c.model.name} gpu={gpus} grid={c.grid_name} "
            f"({len(c.grid)} points) reps={c.reps}..{c.max_reps} ci={c.ci:g} "
            f"sglang={v['sglang']} sglang-router={v['sglang_router']}")
    return [header, f"ppd: backend {c.backend}: {c.backend_why}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ppd_point" in metafunc.fixturenames:
        grid = metafunc.config.stash[SESSION_KEY].config.grid
        metafunc.parametrize("ppd_point", grid, ids=[p.id for p in grid])
    if "ppd_path" in metafunc.fixturenames:
        metafunc.parametrize("ppd_path", PATHS, ids=list(PATHS))


def _order(item: pytest.Item) -> int:
    """0 REMOTE, 1 plain tests, 2 LOCAL, 3 analysis (needs every measurement first).

    REMOTE first: a broken P/D setup (transfer backend, router) fails in the first minute, not after the
    whole LOCAL half of the grid; plain tests (interference) measure on the LOCAL server, so they run just
    before the LOCAL points and share its start."""
    if {"ppd_study", "ppd_baseline"} & set(getattr(item, "fixturenames", ())):
        return 3
    callspec = getattr(item, "callspec", None)
    path = callspec.params.get("ppd_path") if callspec is not None else None
    return {"remote": 0, "local": 2}.get(str(path), 1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # All REMOTE tests, then all LOCAL ones: each topology starts once, never two at a time.
    items.sort(key=_order)
    measuring = any("ppd_measure" in getattr(item, "fixturenames", ()) for item in items)
    if measuring and config.getoption("benchmark_only", default=False):
        raise pytest.UsageError("--benchmark-only would skip every pytest-ppd measurement; drop it (pytest-ppd "
                                "measures with its own protocol) or export with --ppd-benchmark-json FILE")


@pytest.fixture(scope="session")
def ppd_session(request: pytest.FixtureRequest) -> PpdSession:
    """The run's PpdSession (configuration, topologies, records)."""
    return request.config.stash[SESSION_KEY]


@pytest.fixture
def ppd_measure(request: pytest.FixtureRequest, ppd_session: PpdSession) -> Callable[[GridPoint, str], PointOutcome]:
    """measure(point, path) -> PointOutcome; fails the test with fewer than --ppd-reps valid rounds."""
    suite = Path(str(request.node.path)).stem.removeprefix("test_")

    def measure(point: GridPoint, path: str) -> PointOutcome:
        problem = None
        try:
            outcome = ppd_session.measure(point, path, suite)
        except Infeasible as exc:
            problem = ("skip", f"infeasible: {exc}")
        except PpdError as exc:
            problem = ("fail", f"{point.id}-{path}: {exc}")
        if problem is not None:  # outside the except block: no chained traceback in the report
            if problem[0] == "skip":
                pytest.skip(problem[1])
            pytest.fail(problem[1], pytrace=False)
        summary = outcome.summary
        request.node.user_properties.append(("ppd", {
            "point": point.id, "path": path, "n_valid": len(outcome.valid), "n_invalid": len(outcome.invalid),
            "median_ms": summary.median if summary else None,
        }))
        _gate_against_baseline(request, ppd_session, point, path, outcome)
        need = ppd_session.config.reps
        if len(outcome.valid) < need:
            reasons = sorted({r for rec in outcome.records for r in rec.invalid_reasons})
            shown = "\n  ".join(reasons[:8])
            pytest.fail(f"{point.id}-{path}: {len(outcome.valid)} of {len(outcome.records)} rounds valid, "
                        f"--ppd-reps needs {need}; invalid because:\n  {shown}", pytrace=False)
        return outcome

    return measure


@pytest.fixture
def ppd_study(ppd_session: PpdSession) -> "Study":
    """Every grid point measured (or replayed) on both paths, analysed: regimes, exponents, routing."""
    return ppd_session.study()


@pytest.fixture
def ppd_expectations(request: pytest.FixtureRequest, ppd_session: PpdSession) -> "Expectations":
    """The expectations file for this backend, GPU and model (<suite dir>/expectations/ or --ppd-expectations)."""
    directory = ppd_session.config.expectations or Path(str(request.node.path)).parent / "expectations"
    try:
        return ppd_session.expectations(Path(directory))
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)


def _gate_settings(request: pytest.FixtureRequest, ppd_session: PpdSession) -> "GateSettings":
    """The expectations file's [baseline] section; the defaults when this backend/GPU/model has no file."""
    from pytest_ppd.expectations import GateSettings, NoExpectationsFile

    directory = ppd_session.config.expectations or Path(str(request.node.path)).parent / "expectations"
    try:
        return ppd_session.expectations(Path(directory)).gate
    except NoExpectationsFile:
        return GateSettings()


def _gate_against_baseline(request: pytest.FixtureRequest, ppd_session: PpdSession, point: GridPoint, path: str,
                           outcome: PointOutcome) -> None:
    """This point's rounds through the one regression gate (baseline.compare_run), as `ppd compare` runs it."""
    from pytest_ppd.baseline import compare_run

    try:
        base = ppd_session.baseline()
        gate = _gate_settings(request, ppd_session) if base is not None else None
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    if base is None:
        return
    findings = compare_run(base, outcome.records, gate=gate)
    for finding in findings:
        if finding.kind == "improvement":
            ppd_session.note(finding.text)
    regressions = [f.text for f in findings if f.kind == "regression"]
    if regressions:
        pytest.fail("\n".join(regressions), pytrace=False)


@pytest.fixture
def ppd_baseline(ppd_session: PpdSession) -> dict:
    """The --ppd-baseline data (the test is skipped when the run has none)."""
    try:
        base = ppd_session.baseline()
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    if base is None:
        pytest.skip("no --ppd-baseline given")
    return base


@pytest.fixture
def ppd_gate(request: pytest.FixtureRequest, ppd_session: PpdSession) -> "GateSettings":
    """The regression gate's tolerances: the expectations file's [baseline] section (defaults if none)."""
    try:
        return _gate_settings(request, ppd_session)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from pytest_ppd.report.terminal import write_summary

    session = config.stash.get(SESSION_KEY, None)
    if session is not None and (session.outcomes or session.infeasible or session.notes or session.has_study):
        write_summary(terminalreporter, session.summary())
