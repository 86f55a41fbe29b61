"""Simulations side by side: the independent simulations of a search run in worker processes, with the
results, the choices and the counts of one after another.

    trial = Lookahead(lambda x: (summary_of, (DeploymentSpec("pd", 32, x), trace, hw, slo)))
    trial.want([7, 8, 9])      # started in workers now, when there are any (PPD_JOBS; default: the CPUs)
    trial(8)                   # its Summary: waited for, or simulated here when nothing started it
    trial.close()              # what was wanted and never asked for is dropped

A search asks ahead for what it may need next (a hill-climb: both neighbours of where it stands) and then
asks in its own order, so what it evaluates, keeps and reports is unchanged; only a wanted trial it never
asks for is work thrown away. Simulations are deterministic, so a trial gives the same result in a worker as
here.

Workers are forked, once per process, the first time a search wants something: they need no imports and
share the parent's memory until they write. Where forking is unsafe (not Linux, other threads running) or
there is one CPU, or under pytest-xdist (its workers already use the CPUs), there are no workers and every
trial runs here when asked. Workers die with the process that forked them.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import concurrent.futures.process  # noqa: F401  # its exit hook is registered before ours (_at_exit)
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from typing import Any, Callable, Generic, Iterable, NoReturn, TypeVar

from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware
from pytest_ppd.cluster.metrics import Slo, Summary, summarize
from pytest_ppd.cluster import runner
from pytest_ppd.cluster.runner import Run, simulate
from pytest_ppd.cluster.workload import Trace
from pytest_ppd.errors import ConfigError

T = TypeVar("T")
MAX_JOBS = 16
_PR_SET_PDEATHSIG = 1

_pool: cf.ProcessPoolExecutor | None = None
_size = 0
_in_worker = False


def summary_of(spec: DeploymentSpec, trace: Trace, hw: Hardware, slo: Slo) -> Summary:
    """A trial of a static search: the summary of spec on trace."""
    return summarize(simulate(spec, trace, hw), slo)


def run_of(spec: DeploymentSpec, trace: Trace, hw: Hardware, slo: Slo) -> tuple[Run, Summary]:
    """A trial whose run is kept too (the offline bound's whole-trace splits)."""
    run = simulate(spec, trace, hw)
    return run, summarize(run, slo)


def jobs() -> int:
    """Worker processes a search may use: PPD_JOBS if set (1: none), else the CPUs this process may run on
    (at most MAX_JOBS); 1 where forking is unsafe, under pytest-xdist, and inside a worker."""
    text = os.environ.get("PPD_JOBS", "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"PPD_JOBS={text!r}: give a whole number >= 1 of worker processes (1: none)")
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        return 1
    else:
        n = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, MAX_JOBS)
    if _in_worker or not sys.platform.startswith("linux"):
        return 1
    return n


def _start_worker(parent: int) -> None:
    global _in_worker
    _in_worker = True
    runner._watching.set(None)  # a progress bar is the parent's
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:  # die with the parent, SIGKILL included
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl
        os._exit(0)


def _workers() -> cf.ProcessPoolExecutor | None:
    """The process's pool of jobs() workers, forked on first use (again when jobs() changes); None when
    trials run here (see jobs())."""
    global _pool, _size
    n = jobs()
    if _pool is not None and n != _size:
        shutdown()
    if _pool is None:
        if n < 2 or threading.active_count() > 1:
            return None
        _pool, _size = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"),
                                              initializer=_start_worker, initargs=(os.getpid(),)), n
    return _pool


def shutdown(kill: bool = False) -> None:
    """Stop the workers now, dropping what waits for them (kill: not waiting for the trials they run)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        if kill:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _at_exit() -> None:
    # Before concurrent.futures' own exit hook, which would run every trial still queued first (after a
    # Ctrl-C, say): what a process leaves behind at exit nobody will read.
    if not _in_worker:
        shutdown(kill=True)


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # runs before concurrent.futures' hook
atexit.register(shutdown)  # and, should threading not run it, at exit while the modules the pool uses are there


def _broken(exc: BaseException) -> NoReturn:
    shutdown()
    raise RuntimeError("a simulation worker process died or its error could not be sent back (out of memory? "
                       "killed?); PPD_JOBS=1 runs every simulation in this process") from exc


class Lookahead(Generic[T]):
    """evaluate(x) for a search, started ahead in workers on ``want``; see the module docstring. ``task(x)``:
    the module-level function and its arguments that compute x's result."""

    def __init__(self, task: Callable[[int], tuple[Callable[..., T], tuple[Any, ...]]]) -> None:
        self.task = task
        self.started: dict[int, cf.Future[T]] = {}

    def want(self, xs: Iterable[int]) -> None:
        pool = _workers() if jobs() > 1 else None
        if pool is None:
            return
        for x in xs:
            if x not in self.started:
                fn, args = self.task(x)
                try:
                    self.started[x] = pool.submit(fn, *args)
                except cf.process.BrokenProcessPool as exc:
                    _broken(exc)

    def __call__(self, x: int) -> T:
        future = self.started.pop(x, None)
        if future is None:
            fn, args = self.task(x)
            return fn(*args)
        try:
            return future.result()
        except cf.process.BrokenProcessPool as exc:
            _broken(exc)

    def close(self) -> None:
        for future in self.started.values():
            future.cancel()
        self.started.clear()
