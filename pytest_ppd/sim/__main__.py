"""``python -m pytest_ppd.sim``: run one simulated engine until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

from pytest_ppd.errors import ConfigError

if TYPE_CHECKING:
    from pytest_ppd.sim.args import SimConfig


def main(argv: list[str] | None = None) -> int:
    from pytest_ppd.sim.args import resolve

    ledger = None
    try:
        cfg = resolve(argv)
        if cfg.args.sim_link_sharing != "fifo":
            raise ConfigError("--sim-link-sharing fair is modelled in virtual time only (--ppd-backend=virtual, "
                              "ppd cluster); a served sim moves KV one transfer at a time: drop the flag")
        if cfg.args.sim_gpu_ledger:  # share the GPU: size the pool from what the others left free
            from pytest_ppd.sim.memory import CONTEXT_BYTES, GpuLedger, measure_start

            ledger = GpuLedger(cfg.args.sim_gpu_ledger, cfg.args.base_gpu_id, cfg.gpu.memory_bytes)
            weights = cfg.model.weight_bytes // cfg.args.tp_size
            cfg = resolve(argv, memory=measure_start(ledger, weights, cfg.args.sim_load_s))
            kv = cfg.pool_tokens * cfg.model.kv_bytes_per_token // cfg.args.tp_size
            ledger.hold(weights + kv + CONTEXT_BYTES, "weights, KV pool, CUDA context and graphs")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if ledger is not None:
            ledger.release()
        return 2
    try:
        return _serve(cfg)
    finally:
        if ledger is not None:
            ledger.release()


def _serve(cfg: "SimConfig") -> int:
    level = getattr(logging, str(cfg.args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="[%(asctime)s] %(message)s", stream=sys.stdout)
    log = logging.getLogger("pytest_ppd.sim")
    log.info("sim engine: model=%s gpu=%s mode=%s pool=%d tokens chunk=%d max_running=%d",
             cfg.model.name, cfg.gpu.name, cfg.args.disaggregation_mode, cfg.pool_tokens,
             cfg.chunked_prefill_size, cfg.max_running_requests)
    from pytest_ppd.sim.server import serve

    async def run() -> None:
        task = asyncio.ensure_future(serve(cfg))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    except OSError as exc:  # typically: address already in use
        print(f"error: cannot serve on {cfg.args.host}:{cfg.args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
