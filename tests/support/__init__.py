"""Helpers shared by tests."""


def count_starts_conftest(before_start: str = "") -> str:
    """A conftest that records the name of every server process started into starts.json (run's cwd);
    `before_start` is code run in ServerProcess.start before the real start (self is the process)."""
    hook = "".join(f"    {line}\n" for line in before_start.strip().splitlines())
    return f"""
import json, pathlib
from pytest_ppd.servers import process
STARTS = []
_start = process.ServerProcess.start
def start(self):
    STARTS.append(self.name)
{hook}    return _start(self)
process.ServerProcess.start = start
def pytest_unconfigure(config):
    pathlib.Path("starts.json").write_text(json.dumps(STARTS))
"""
