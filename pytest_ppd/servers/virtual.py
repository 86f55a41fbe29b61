"""The virtual backend's topologies: the served sim's exact engine command lines, run in-process.

The argv comes from the same builder as ``--ppd-backend=sim`` (servers/commands.py),
so a virtual engine has the pool, chunk size, GPU, link and profile the served
one would have; nothing is launched and no port is taken.

    dep, argvs = virtual_topology(TopologyConfig(backend="sim", kind="pd", model="Llama-3.1-8B"))
"""

from __future__ import annotations

from pathlib import Path

from pytest_ppd.servers.commands import EngineLaunch, LaunchSpec, engine_argv
from pytest_ppd.servers.topology import TopologyConfig
from pytest_ppd.sim.deployment import Deployment
from pytest_ppd.specs import gpu_spec, link_spec

_MODULE_ARGS = 3  # python -m pytest_ppd.sim


def virtual_topology(cfg: TopologyConfig) -> tuple[Deployment, list[list[str]]]:
    """(the deployment, each engine's argv as the served sim would run it)."""
    cfg.validate()
    spec = LaunchSpec(
        backend="sim", model_path=Path(cfg.model), host=cfg.host, tp_size=cfg.tp_size,
        sim_gpu=gpu_spec(cfg.gpu).name, sim_link=link_spec(cfg.link).name, sim_flags=cfg.sim_flags,
        sim_prefill_gpu=gpu_spec(cfg.prefill_gpu).name if cfg.prefill_gpu else None,
        extra_engine_args=cfg.engine_args, max_total_tokens=cfg.max_total_tokens,
        context_length=cfg.context_length,
    )
    if cfg.kind == "colocated":
        argvs = [engine_argv(spec, EngineLaunch("colocated", 0))]
        return Deployment.from_argvs(colocated=[a[_MODULE_ARGS:] for a in argvs]), argvs
    argvs = [engine_argv(spec, EngineLaunch("prefill", 0, bootstrap_port=0)),
             engine_argv(spec, EngineLaunch("decode", 0, base_gpu_id=cfg.tp_size))]
    dep = Deployment.from_argvs(prefill=[argvs[0][_MODULE_ARGS:]], decode=[argvs[1][_MODULE_ARGS:]])
    return dep, argvs
