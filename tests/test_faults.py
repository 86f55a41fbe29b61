"""The fault matrix: injected server faults end as precise invalid rounds, and no process outlives a run."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pytest_ppd.records import RecordStore
from pytest_ppd.servers.process import ServerProcess, free_port, tagged_processes
from pytest_ppd.servers.topology import TopologyConfig, start_topology

pytestmark = pytest.mark.slow
SUITE = "def test_append(ppd_point, ppd_path, ppd_measure):\n    ppd_measure(ppd_point, ppd_path)\n"
LEFT = {}  # case -> processes left, printed at the end


def _env(token):
    return {**os.environ, "PPD_RUN_TOKEN": token}


def _wait_gone(token, within_s=10.0):
    deadline = time.monotonic() + within_s
    while tagged_processes(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    return tagged_processes(token)


# warm-up sends request 1 (BS=1, L>0); the first measured round is request 2.
FAULTS = [
    ("http500@2", "local", "HTTPStatus: HTTP 500"),
    ("truncate@2", "local", "RemoteProtocolError"),
    ("malformed@2", "local", "MalformedEvent"),
    ("sse-error@2", "local", "StreamError: injected fault"),
    ("stall@2:30", "local", "ReadTimeout"),
    ("kv-fail@2", "remote", "KV transfer failed: injected fault"),
]


@pytest.mark.parametrize("fault,path,reason", FAULTS, ids=[f[0] for f in FAULTS])
def test_injected_fault_is_a_precise_invalid_round(pytester, fault, path, reason):
    pytester.makepyfile(test_grid=SUITE)
    res = pytester.path / "res"
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = pytester.run(sys.executable, "-m", "pytest", "test_grid.py", "--ppd-backend=sim",
                          "--ppd-grid=bs=1;L=256;m=16", "-k", path,
                          f"--ppd-results={res}", f"--ppd-sim-args=--sim-fault={fault}", "--ppd-timeout=3",
                          "--ppd-max-reps=4", "-p", "no:cacheprovider", timeout=120)
    assert time.monotonic() - started < 100, "a fault must never hang the run"
    rounds = RecordStore.read(res / "records.jsonl").rounds
    bad = [r for r in rounds if not r["valid"]]
    assert bad and any(reason in x for x in bad[0]["invalid_reasons"]), bad[:1]
    assert any(r["valid"] for r in rounds), "rounds after the single fault should succeed"
    result.stdout.fnmatch_lines(["*invalid rounds (kept in records, excluded from statistics): 1*"])
    LEFT[fault] = len(_wait_gone(token))


def test_slow_kv_transfer_is_measured_not_invalid(tmp_path):
    """slow-kv makes REMOTE slower (the rounds stay valid): the transfer is part of what REMOTE costs."""
    from pytest_ppd.client.runner import Settings, Target, measure_point
    from pytest_ppd.grid import GridPoint
    from pytest_ppd.specs import gpu_spec, model_spec

    settings = Settings("t", "sim", model_spec("Llama-3.1-8B"), gpu_spec("H100-SXM"), min_reps=3, max_reps=3)
    medians = {}
    for flags in ((), ("--sim-fault=slow-kv@1+:50",)):
        with start_topology(TopologyConfig(kind="pd", sim_flags=flags), tmp_path / str(len(flags))) as topo:
            target = Target("remote", topo.router, tuple(topo.prefill + topo.decode))
            store = RecordStore(tmp_path / f"r{len(flags)}", run_id="t", config_hash="h")
            out = measure_point(target, GridPoint(2, 2048, 64), settings, store)
            assert len(out.valid) == 3
            medians[flags] = out.summary.median
    assert medians[("--sim-fault=slow-kv@1+:50",)] > medians[()] + 100  # 2 x 2112 x 128 KiB x 50 over 50 GB/s


def test_server_crash_mid_grid_restarts_the_topology_and_continues(pytester):
    pytester.makepyfile(test_grid=SUITE)
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    res = pytester.path / "res"
    # Each point: 1 warm-up + 3 rounds = 4 requests; the 5th (second point's warm-up) crashes the engine.
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_grid.py", "--ppd-backend=sim",
                           "--ppd-grid=bs=1;L=256;m=16,32,64",
                           "-k", "local", f"--ppd-results={res}", "--ppd-sim-args=--sim-fault=crash@5",
                           "--ppd-reps=3", "--ppd-max-reps=3", "--ppd-timeout=5", "-p", "no:cacheprovider", "-q"],
                          cwd=pytester.path, env=_env(token), capture_output=True, text=True, timeout=180)
    assert "1 failed, 2 passed" in proc.stdout, proc.stdout[-3000:]
    assert "warm-up of bs1-L256-m32 failed" in proc.stdout
    assert "restarted the local topology after" in proc.stdout
    LEFT["server crash mid-grid"] = len(_wait_gone(token))
    assert LEFT["server crash mid-grid"] == 0


@pytest.mark.parametrize("case", ["normal", "failing", "-x", "SIGINT", "SIGTERM"])
def test_no_process_outlives_the_run(pytester, case):
    body = SUITE if case == "normal" else SUITE + "    assert ppd_point.m != 16, 'deliberate failure'\n"
    pytester.makepyfile(test_grid=body)
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "pytest", "test_grid.py", "--ppd-backend=sim", "--ppd-grid=bs=1;L=256;m=16,32",
            f"--ppd-results={pytester.path / 'res'}", "-p", "no:cacheprovider", "-q"]
    if case == "-x":
        args.append("-x")
    proc = subprocess.Popen(args, cwd=pytester.path, env=_env(token), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if case in ("SIGINT", "SIGTERM"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(tagged_processes(token)) < 2:
            time.sleep(0.1)
        assert tagged_processes(token), "servers never started"
        proc.send_signal(getattr(signal, case))
    out, _ = proc.communicate(timeout=120)
    if case == "normal":
        assert proc.returncode == 0, out[-2000:]
    LEFT[case] = len(_wait_gone(token))
    assert LEFT[case] == 0, f"{case}: {tagged_processes(token)}"


def test_killed_xdist_worker_leaves_nothing(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_grid=SUITE)
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "test_grid.py", "-n", "1", "--ppd-backend=sim",
                             "--ppd-grid=bs=1;L=256;m=16,32,64,128", f"--ppd-results={pytester.path / 'res'}",
                             "-p", "no:cacheprovider", "-q"], cwd=pytester.path, env=_env(token),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def guards():
        return [pid for pid, _, cmd in tagged_processes(token) if "pytest_ppd.servers.guard" in cmd]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not guards():
        time.sleep(0.1)
    assert guards(), "no server started under xdist"
    stat = Path(f"/proc/{guards()[0]}/stat").read_text()
    worker = int(stat.split(")")[1].split()[1])  # the guard's parent: the xdist worker
    os.kill(worker, signal.SIGKILL)
    proc.wait(timeout=120)
    LEFT["killed xdist worker"] = len(_wait_gone(token))
    assert LEFT["killed xdist worker"] == 0


def test_server_spawned_from_an_exiting_thread_survives(tmp_path):
    """PR_SET_PDEATHSIG would kill it when the spawning thread exits; the guard pipe does not."""
    port = free_port()
    holder = {}

    def spawn():
        holder["p"] = ServerProcess("t", [sys.executable, "-m", "pytest_ppd.sim", "--model-path", "Llama-3.1-8B",
                                          "--port", str(port)], health_url=f"http://127.0.0.1:{port}/health",
                                    log_path=tmp_path / "t.log").start()

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()
    proc = holder["p"]
    try:
        proc.wait_ready(30)
        time.sleep(1.0)
        assert proc.alive
    finally:
        proc.stop()
    assert not proc.alive


def test_relaunch_on_the_same_port_succeeds(tmp_path):
    port = free_port()
    for i in range(2):
        with start_topology(TopologyConfig(kind="colocated", port=port), tmp_path / str(i)) as topo:
            assert topo.colocated.endswith(f":{port}")


def test_print_fault_matrix_figures(figures):
    """Reports the processes-left figures of the cases above (run last in this module)."""
    figures["fault matrix: processes left per case"] = dict(LEFT)
    assert all(v == 0 for v in LEFT.values()), LEFT


_WRITER = """
import sys, time
from pathlib import Path
from pytest_ppd.records import RecordStore
store = RecordStore(Path(sys.argv[1]), run_id="k", config_hash="h")
i = 0
while True:
    store.append_json("round", {"bs": 1, "L": 1, "m": 1, "path": "local", "round": i, "pad": "x" * (i % 997)})
    print(i, flush=True)  # confirmed: append returned, so the line is written and fsynced
    i += 1
"""


def test_kill_9_never_loses_a_confirmed_record(tmp_path, figures):
    """20 writers killed with SIGKILL at random moments: every round whose append returned is in the file,
    a torn last line is the only damage ever seen, and a resume cuts it away."""
    import random
    import subprocess
    import sys
    import time

    from pytest_ppd.records import RecordStore

    rng = random.Random(20261201)
    lost = torn = confirmed_total = 0
    for trial in range(20):
        directory = tmp_path / str(trial)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is writing
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        confirmed = [int(line) for line in [first, *proc.stdout.read().split()] if str(line).strip()]
        proc.wait()
        proc.stdout.close()
        stored = RecordStore.read(directory / "records.jsonl", truncate_torn=True)
        present = {r["round"] for r in stored.rounds}
        lost += len(set(confirmed) - present)
        torn += stored.torn_tail
        confirmed_total += len(confirmed)
        assert sorted(present) == list(range(len(present)))  # no hole, no duplicate
        RecordStore(directory, run_id="k", config_hash="h", resume=True)  # resumable after the kill
    figures["records lost over 20 random kill -9 trials"] = (
        f"{lost} of {confirmed_total} confirmed ({torn} torn tails cut)")
    assert lost == 0


def _listening_sockets(pids):
    """(pid, local address) of every listening TCP socket the given processes hold (from /proc)."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:
                continue
            addr = cols[1].split(":")[0]
            if v6:
                host = "::1" if addr == "00000000000000000000000001000000" else addr
            else:
                host = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
            found.append((inodes[cols[9]], host))
    return found


def test_sentinel_api_key_never_written_and_only_loopback_listens(pytester):
    """With PPD_API_KEY set: servers and router require it, it appears 0 times in anything the run writes,
    and every socket the run's processes listen on is on loopback."""
    sentinel = "ppd-sentinel-" + uuid.uuid4().hex
    pytester.makepyfile(test_grid=SUITE + """
import os
from pytest_ppd.servers.process import tagged_processes
def test_zz_scan(ppd_session):
    ppd_session.target("remote")
    from tests_scan import scan
    scan()
""")
    pytester.makepyfile(tests_scan="""
import json, os
from pathlib import Path
from pytest_ppd.servers.process import tagged_processes
import test_faults_helpers
def scan():
    pids = [p for p, _, _ in tagged_processes(os.environ["PPD_RUN_TOKEN"])]
    Path("sockets.json").write_text(json.dumps(test_faults_helpers.listening(pids)))
""")
    pytester.makepyfile(test_faults_helpers="import sys\nsys.path.insert(0, %r)\n"
                        "from test_faults import _listening_sockets as listening\n" % str(Path(__file__).parent))
    token = f"ppd-test-{uuid.uuid4().hex[:8]}"
    env = {**_env(token), "PPD_API_KEY": sentinel}
    res = pytester.path / "res"
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_grid.py", "--ppd-backend=sim",
                           "--ppd-grid=bs=1;L=256;m=16", f"--ppd-results={res}",
                           f"--junitxml={pytester.path / 'junit.xml'}", "-p", "no:cacheprovider", "-rA", "-v"],
                          cwd=pytester.path, env=env, capture_output=True, text=True, timeout=180)
    assert "3 passed" in proc.stdout, proc.stdout[-3000:]
    written = [p for p in pytester.path.rglob("*") if p.is_file() and p.suffix != ".py"]
    assert any(p.name == "records.jsonl" for p in written) and any(p.suffix == ".log" for p in written)
    hits = [str(p) for p in written if sentinel.encode() in p.read_bytes()]
    hits += ["stdout"] if sentinel in proc.stdout + proc.stderr else []
    assert hits == [], f"API key leaked into {hits}"
    logs = [p for p in written if p.suffix == ".log"]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in logs)
    import json

    sockets = json.loads((pytester.path / "sockets.json").read_text())
    assert len(sockets) >= 4  # router, its metrics port, prefill (+ bootstrap), decode
    assert {host for _, host in sockets} <= {"127.0.0.1", "::1"}, sockets
    assert _wait_gone(token) == []
