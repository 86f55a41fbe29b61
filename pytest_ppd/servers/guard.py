"""The guard: a tiny parent for every server that kills it when its run dies.

``python -m pytest_ppd.servers.guard --fd N -- ARGV...`` runs ARGV as its child
in the guard's own process group, then blocks reading fd N, the read end of a
pipe whose write end only the launching process holds. When that process dies
for any reason, SIGKILL included, the read sees EOF and the guard kills the
whole group: SIGTERM, a grace period, SIGKILL. PR_SET_PDEATHSIG alone would
not do: it fires when the *thread* that spawned the child exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 5.0


def _kill_group(grace_s: float) -> None:
    pgid = os.getpgrp()
    try:
        os.killpg(pgid, signal.SIGTERM)  # the guard ignores it (handler below)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--fd" or argv[2] != "--":
        print("usage: python -m pytest_ppd.servers.guard --fd N -- ARGV...", file=sys.stderr)
        return 2
    fd = int(argv[1])
    child = subprocess.Popen(argv[3:], close_fds=True)

    def on_parent_gone() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        _kill_group(GRACE_S)

    def on_term(signum: int, _frame: object) -> None:
        # Teardown signalled the group: pass it on once, then make sure.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=_kill_group, args=(GRACE_S,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; pytest decides
    threading.Thread(target=on_parent_gone, daemon=True).start()
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
