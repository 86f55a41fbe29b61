"""An SGLang-compatible simulated engine: same HTTP API and flags, roofline step times.

Start one as a real server process: ``python -m pytest_ppd.sim --model-path DIR --port 30000``;
use the core in-process with a virtual clock through ``pytest_ppd.sim.clock.VirtualRunner``.
"""
