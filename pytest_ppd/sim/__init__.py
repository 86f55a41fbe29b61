"""An SGLang-compatible simulated engine: same HTTP API and flags, roofline step times.

Start one as a real server process: ``python -m pytest_ppd.sim --model-path DIR --port 30000``;
simulate a whole deployment (engines, KV links, router, clients) in virtual time with
``pytest_ppd.sim.deployment.Deployment`` (what ``--ppd-backend=virtual`` runs).
"""
