"""Searches in worker processes (cluster/pool.py): the same choices, results and counts as one simulation
after another; one clear error when a worker dies; no worker outlives its process."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pytest_ppd.cluster import Slo, Study, generate, summarize, workload_spec
from pytest_ppd.cluster import pool
from pytest_ppd.cluster.pool import Lookahead, jobs
from pytest_ppd.cluster.runner import Run
from pytest_ppd.cluster.strategy import make_strategy
from pytest_ppd.cluster.routers import parse_rule
from pytest_ppd.cluster.study import hill_climb
from pytest_ppd.errors import ConfigError


def _unwalled(s):
    return dataclasses.replace(s, wall_s=0.0)


def _seen(outcome):
    """Everything an outcome reports but the wall time its runs took."""
    return (outcome.chosen, _unwalled(outcome.summary), [_unwalled(c) for c in outcome.considered],
            outcome.schedule, outcome.runs, outcome.ttft_ms)


@pytest.mark.parametrize(("name", "search"), [("static", "local"), ("static", "all"), ("offline", "local")])
def test_a_search_in_workers_chooses_reports_and_counts_as_one_run_after_another(monkeypatch, name, search):
    spec = workload_spec("seed003", requests=60, rate=24.0)
    trace, study = generate(spec, seed=3), Study(6, Slo(500, 50), interval_s=1.5)

    def outcome(workers: str):
        monkeypatch.setenv("PPD_JOBS", workers)
        return make_strategy(name, spec, 3, search=search, hardware=study.hardware).run(trace, study)

    serial = outcome("1")
    pool.shutdown()
    parallel = outcome("2")
    assert pool._pool is not None, "the search sent nothing to workers"
    assert _seen(parallel) == _seen(serial)
    assert parallel.runs > 2


def test_trials_run_in_forked_workers_and_here_without_them(monkeypatch):
    monkeypatch.setenv("PPD_JOBS", "2")
    look = Lookahead(lambda x: (os.getpid, ()))
    look.want([1, 2])
    assert {look(1), look(2)} - {os.getpid()}, "wanted trials ran in workers"
    assert look(3) == os.getpid()  # never wanted: here
    monkeypatch.setenv("PPD_JOBS", "1")
    look.want([4])
    assert look(4) == os.getpid() and not look.started


def test_with_other_threads_running_nothing_is_forked(monkeypatch):
    monkeypatch.setenv("PPD_JOBS", "2")
    pool.shutdown()
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        look = Lookahead(lambda x: (os.getpid, ()))
        look.want([1])
        assert pool._pool is None and look(1) == os.getpid()
    finally:
        stop.set()
        other.join()


def test_jobs_come_from_ppd_jobs_and_a_bad_value_names_the_fix(monkeypatch):
    monkeypatch.setenv("PPD_JOBS", "3")
    assert jobs() == 3
    monkeypatch.delenv("PPD_JOBS")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert jobs() == 1  # xdist's workers already use the CPUs
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv("PPD_JOBS", bad)
        with pytest.raises(ConfigError, match="PPD_JOBS=.*whole number >= 1"):
            jobs()


def test_a_dead_worker_is_one_clear_error_and_the_next_search_starts_afresh(monkeypatch):
    monkeypatch.setenv("PPD_JOBS", "2")
    pool.shutdown()
    look = Lookahead(lambda x: (os._exit, (3,)))
    look.want([1])
    with pytest.raises(RuntimeError, match="worker process died.*PPD_JOBS=1"):
        look(1)
    assert pool._pool is None
    again = Lookahead(lambda x: (abs, (-x,)))
    again.want([5])
    assert again(5) == 5


def test_an_error_in_a_worker_reaches_the_search_as_itself(monkeypatch):
    monkeypatch.setenv("PPD_JOBS", "2")
    look = Lookahead(lambda x: (parse_rule, ("no-such-rule",)))
    look.want([1])
    with pytest.raises(ConfigError, match="not a conditional-disaggregation rule"):
        look(1)


def test_a_new_ppd_jobs_forks_a_pool_of_that_size(monkeypatch):
    for n in ("2", "3"):
        monkeypatch.setenv("PPD_JOBS", n)
        look = Lookahead(lambda x: (os.getpid, ()))
        look.want([1])
        look(1)
        assert pool._size == int(n) and len(pool._pool._processes) == int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_trials_still_queued_at_exit_are_dropped_not_run():
    """10 trials of 5 s each on 2 workers: run to the end, the exit would take 25 s; dropped, it takes ~0."""
    script = ("import os, time\n"
              "os.environ['PPD_JOBS'] = '2'\n"
              "from pytest_ppd.cluster import pool\n"
              "look = pool.Lookahead(lambda x: (time.sleep, (5,)))\n"
              "look.want(range(10))\n"
              "print('queued', flush=True)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "queued" in done.stdout, done.stderr
    assert time.monotonic() - started < 15


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_workers_die_with_their_process_even_when_it_is_killed():
    script = ("import os, time\n"
              "os.environ['PPD_JOBS'] = '2'\n"
              "from pytest_ppd.cluster import pool\n"
              "look = pool.Lookahead(lambda x: (time.sleep, (120,)))\n"
              "look.want([1, 2])\n"
              "print(*pool._pool._processes, flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers)


def test_a_climb_told_what_comes_next_evaluates_and_keeps_the_same():
    s = summarize(Run("x", 1, "w", (), 1, 0, 0.0, 0, 0.0), Slo())
    shaped = {x: dataclasses.replace(s, slo_attainment=1 - abs(x - 6) / 10) for x in range(1, 16)}
    told: list[list[int]] = []
    plain = hill_climb(shaped.__getitem__, 2, 1, 15)
    ahead = hill_climb(shaped.__getitem__, 2, 1, 15, told.append)
    assert ahead == plain
    assert told[0] == [2, 1, 3] and all(1 <= x <= 15 for xs in told for x in xs)
    assert set().union(*told) >= set(plain[1])  # everything it evaluated was wanted first
    edge = hill_climb(shaped.__getitem__, 15, 1, 15, told.append)
    assert edge == hill_climb(shaped.__getitem__, 15, 1, 15) and 16 not in told[-1]
