"""Server processes that cannot outlive their run.

Every server (sim engine, SGLang, router) starts through ``ServerProcess``:

* it runs under the guard (``servers/guard.py``) in its own process group, tied
  to this process by a pipe, so even ``kill -9`` of the run takes it down;
* its environment carries ``PPD_RUN_TOKEN`` so ``ppd reap`` and the final
  sweep find it and any grandchild;
* readiness polling notices a child that died and raises ``ServerLaunchError``
  with its log tail; teardown is SIGTERM to the group, a grace, SIGKILL.

    with ServerProcess("decode", argv, health_url="http://127.0.0.1:30002/health") as proc:
        proc.wait_ready(timeout_s=60)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pytest_ppd.errors import ServerLaunchError

TOKEN_ENV = "PPD_RUN_TOKEN"
ROLE_ENV = "PPD_ROLE"
_RUN_TOKEN = os.environ.get(TOKEN_ENV) or f"ppd-{uuid.uuid4().hex[:12]}"
_GUARD_PIPE: tuple[int, int] | None = None
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def _guard_read_fd() -> int:
    """One pipe per run: only this process holds the write end; its death is EOF for every guard."""
    global _GUARD_PIPE
    if _GUARD_PIPE is None:
        r, w = os.pipe()
        os.set_inheritable(w, False)
        _GUARD_PIPE = (r, w)
    return _GUARD_PIPE[0]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (there is a race; launch retries handle it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One guarded server process; a context manager that always stops it."""

    name: str
    argv: list[str]
    health_url: str | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        if self.log_path is None:
            self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{_RUN_TOKEN}-{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = _guard_read_fd()
        # Servers talk to each other on loopback: no proxy from the environment may intercept it.
        inherited = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
        # SPT_NOENV: setproctitle (the router renames itself "sglang::router") must not clobber environ,
        # where PPD_RUN_TOKEN lets `ppd reap` find it.
        env = {**inherited, **self.env, TOKEN_ENV: _RUN_TOKEN, ROLE_ENV: self.name, "PYTHONUNBUFFERED": "1",
               "SPT_NOENV": "1"}
        guard = [sys.executable, "-m", "pytest_ppd.servers.guard", "--fd", str(fd), "--", *self.argv]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        log_fd = os.open(self.log_path, flags, 0o600)
        try:
            self.popen = subprocess.Popen(
                guard, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, pass_fds=(fd,), close_fds=True,
            )
        except OSError as exc:
            raise ServerLaunchError(f"{self.name}: cannot start {self.argv[0]!r}: {exc}") from None
        finally:
            os.close(log_fd)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines) if self.log_path else ""

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.2) -> None:
        """Poll the health URL until 200; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        with httpx.Client(timeout=2.0, trust_env=False, headers=self.headers) as client:
            while True:
                if not self.alive:
                    code = self.popen.returncode if self.popen else None
                    raise ServerLaunchError(f"{self.name} exited during start-up (exit code {code})",
                                            self.tail())
                if self.health_url is None:
                    return
                try:
                    resp = client.get(self.health_url)
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerLaunchError(
                        f"{self.name} not healthy at {self.health_url} after {timeout_s:.0f}s ({last})",
                        self.tail())
                time.sleep(interval_s)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the whole group, wait, then SIGKILL it; returns the exit code."""
        if self.popen is None:
            return None
        pgid = self.popen.pid  # start_new_session: the guard leads its group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # grandchildren that ignored SIGTERM
        except ProcessLookupError:
            pass
        try:
            return self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.popen is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tagged_processes(token: str | None = None) -> list[tuple[int, str, str]]:
    """(pid, role, command line) of live processes carrying PPD_RUN_TOKEN (this run's, or any)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        env = dict(kv.split(b"=", 1) for kv in environ if b"=" in kv)
        have = env.get(TOKEN_ENV.encode())
        if have is None or (token is not None and have.decode() != token):
            continue
        role = env.get(ROLE_ENV.encode(), b"?").decode()
        found.append((int(entry.name), role, cmdline.strip()))
    return found


def reap(token: str | None = None, grace_s: float = 3.0) -> list[tuple[int, str, str]]:
    """Stop tagged processes (of one run, or all runs); returns what was found."""
    victims = [p for p in tagged_processes(token) if p[0] != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _, _ in victims:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            if not any(Path(f"/proc/{pid}").exists() for pid, _, _ in victims):
                break
            time.sleep(0.1)
    return victims
