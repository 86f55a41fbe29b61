"""What the sim predicts for one batched append: `ppd predict`, on the virtual-time deployment.

For each point, BS contexts of L tokens are cached on one colocated engine, then BS
appends of m fresh tokens arrive together; the prediction is the engine-side latency
of that batch (the slowest request's first_token_latency: what `ppd calibrate` fits)::

    predict([(8, 4096, 512)], "Llama-3.1-8B", "H100-SXM", profile="default")
    # [{"bs": 8, "L": 4096, "m": 512, "engine_ms": ..., "floor_ms": ...}]
"""

from __future__ import annotations

from typing import Any, Sequence

from pytest_ppd.errors import ConfigError
from pytest_ppd.roofline import floor_ms
from pytest_ppd.sim.deployment import Deployment
from pytest_ppd.specs import gpu_spec, model_spec


def parse_points(text: str) -> list[tuple[int, int, int]]:
    """'BS,L,M;BS,L,M;...' -> [(bs, L, m), ...]."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            bs, L, m = (int(x) for x in part.split(","))
        except ValueError:
            raise ConfigError(f"--points: '{part}' is not BS,L,M (three integers), e.g. 8,4096,512") from None
        if bs < 1 or L < 0 or m < 1:
            raise ConfigError(f"--points: '{part}' needs BS >= 1, L >= 0, M >= 1")
        points.append((bs, L, m))
    if not points:
        raise ConfigError("--points: empty; give 'BS,L,M;BS,L,M', e.g. '1,4096,32;8,4096,512'")
    return points


def _ids(n: int, salt: int) -> list[int]:
    return [1000 + (salt * 1_000_003 + j * 7919) % 120_000 for j in range(n)]


def predict(points: Sequence[tuple[int, int, int]], model: str, gpu: str, *, profile: str = "default",
            chunked_prefill_size: int | None = None) -> list[dict[str, Any]]:
    spec, g = model_spec(model), gpu_spec(gpu)
    argv = ["--model-path", model, "--sim-gpu", g.name]
    if profile != "default":
        argv += ["--sim-profile", profile]
    if chunked_prefill_size is not None:
        argv += ["--chunked-prefill-size", str(chunked_prefill_size)]
    out = []
    for bs, L, m in points:
        dep = Deployment.from_argvs(colocated=[argv])
        if bs * (L + m + 1) > dep.pool_tokens:
            raise ConfigError(f"bs{bs}-L{L}-m{m}: {bs * (L + m + 1)} tokens do not fit the {dep.pool_tokens}-token "
                              f"pool of {g.name}; such an append cannot keep its context cached")
        contexts = [_ids(L, c) for c in range(bs)]
        if L:
            dep.run_until_done([dep.submit(ctx, 1) for ctx in contexts])
        appends = [dep.submit(ctx + _ids(m, 10_000 + c), 1) for c, ctx in enumerate(contexts)]
        dep.run_until_done(appends)
        errors = [h.error for h in appends if h.error]
        if errors:
            raise ConfigError(f"bs{bs}-L{L}-m{m}: {errors[0]}")
        engine_ms = max(h.meta_info["first_token_latency"] for h in appends) * 1e3
        out.append({"bs": bs, "L": L, "m": m, "engine_ms": round(engine_ms, 4),
                    "floor_ms": round(floor_ms(spec, g, bs, L, m), 4)})
    return out
