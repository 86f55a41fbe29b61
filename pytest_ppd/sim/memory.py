"""GPU memory as SGLang sees it when an engine starts, for engines that share one GPU.

SGLang 0.5.23 sizes its KV pool from the memory free at start-up
(``kv_cache_configurator._profile_available_bytes``)::

    pre       = free memory before the weights load      (bootstrap.measure_pre_model_load_memory)
    available = free memory after they loaded
    rest      = available - pre x (1 - mem_fraction_static)   <= 0: "Loaded weights leave no GPU memory ..."

Alone on a GPU that is ``total x fraction - weights``. Two engines on one GPU see
each other: started one after the other, the second counts only what the first
left free; started together, each loses the other's weights from ``available``
while its slack was sized from a ``pre`` that still held them, and one pool
comes out empty. A sim engine started with ``--sim-gpu-ledger DIR`` keeps what it
holds in ``DIR/gpu<id>-<pid>.json`` (weights while loading; then weights, its
KV pool and ``CONTEXT_BYTES``), and reads what the live others hold, so the same
mistake fails the same way on the sim as on the GPU.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pytest_ppd.errors import ConfigError

# What an engine holds besides weights and KV pool: the CUDA context, cuBLAS workspaces and CUDA graphs
# (about 1 GiB for an 8B model at SGLang's defaults; activations come and go inside the slack).
CONTEXT_BYTES = 1 << 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GpuLedger:
    """What the engines on one GPU hold, one file per engine process, summed by whoever asks."""

    def __init__(self, directory: str | Path, gpu_id: int, total_bytes: int, owner: str | None = None) -> None:
        self.dir, self.gpu_id, self.total = Path(directory), gpu_id, total_bytes
        self.owner = owner or str(os.getpid())
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--sim-gpu-ledger {directory}: {exc.strerror}; name a writable directory") from None

    @property
    def path(self) -> Path:
        return self.dir / f"gpu{self.gpu_id}-{self.owner}.json"

    def held_by_others(self) -> int:
        held = 0
        for path in self.dir.glob(f"gpu{self.gpu_id}-*.json"):
            if path == self.path:
                continue
            try:
                claim = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or removed
            if _alive(int(claim.get("pid", 0))):
                held += int(claim.get("bytes", 0))
        return held

    def free_bytes(self) -> int:
        """The GPU's free memory as this engine would measure it: total less what everyone holds."""
        own = self.held()
        return self.total - self.held_by_others() - own

    def held(self) -> int:
        try:
            return int(json.loads(self.path.read_text()).get("bytes", 0))
        except (OSError, ValueError):
            return 0

    def hold(self, nbytes: int, what: str) -> None:
        """Replace this engine's claim (atomically: readers see the old or the new one)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "bytes": int(nbytes), "what": what}))
        os.replace(tmp, self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def measure_start(ledger: GpuLedger, weight_bytes: int, load_s: float = 0.0) -> tuple[int, int]:
    """SGLang's start-up as the ledger sees it: (pre, available) around loading the weights."""
    pre = ledger.free_bytes()
    ledger.hold(weight_bytes, "weights")
    if load_s > 0:
        time.sleep(load_s)  # others starting meanwhile see the weights, not yet the pool
    return pre, ledger.free_bytes()


def rest_bytes(pre: float, available: float, fraction: float) -> float:
    """SGLang's KV budget: what is free after loading, less the slack kept from what was free before."""
    return available - pre * (1 - fraction)


def no_pool_message(pre: float, available: float, fraction: float) -> str:
    """SGLang 0.5.23's own words (kv_cache_configurator.py), with the one-GPU fix."""
    minimum = 1 - available / pre if pre > 0 else 1.0
    return (f"Loaded weights leave no GPU memory for the KV cache under --mem-fraction-static={fraction}. "
            f"Raise --mem-fraction-static above {minimum:.3f} (free before loading {pre / 2**30:.1f} GiB, after "
            f"{available / 2**30:.1f} GiB); engines sharing a GPU must start one after the other "
            "(ppd serve --share-gpu does)")
