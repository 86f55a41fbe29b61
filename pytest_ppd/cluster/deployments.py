"""Deployments of N GPUs as the cluster study runs them: one engine per GPU (TP 1), each configured by the
served sim's exact argv (servers/commands.engine_argv), on the one virtual-time simulator.

    spec = parse_deployment("2P6D", gpus=8, policy="cache", rule="vllm-ppd")   # conditional P/D
    dep = build(spec, Hardware())                                               # a RoutedDeployment
    [s.label for s in candidates(4)]    # ['agg-rr', '1P3D-rr', '2P2D-rr', '3P1D-rr']

Kinds: ``agg`` (N colocated engines behind the policy), ``pd`` (static xPyD: x prefill + y decode engines)
and ``cond`` (xPyD whose decode engines are colocated engines that prefill what the rule keeps LOCAL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pytest_ppd.cluster.routed import RoutedDeployment
from pytest_ppd.cluster.routers import POLICIES, parse_rule
from pytest_ppd.errors import ConfigError
from pytest_ppd.servers.commands import EngineLaunch, LaunchSpec, engine_argv
from pytest_ppd.sim.args import SimConfig, resolve
from pytest_ppd.specs import DEFAULT_GPU, DEFAULT_LINK, DEFAULT_MODEL, gpu_spec, link_spec

KINDS = ("agg", "pd", "cond")
_MODULE_ARGS = 3  # python -m pytest_ppd.sim
_SPLIT = re.compile(r"^(\d+)p(\d+)d$", re.IGNORECASE)


@dataclass(frozen=True)
class Hardware:
    """What every engine runs: model, GPU, KV link, and extra engine flags (SGLang's or --sim-*)."""

    model: str = DEFAULT_MODEL
    gpu: str = DEFAULT_GPU
    link: str = DEFAULT_LINK
    engine_args: tuple[str, ...] = ()
    link_sharing: str = "fair"  # concurrent hand-offs into a decode engine share its link (sim/links.py)


@dataclass(frozen=True)
class DeploymentSpec:
    """N GPUs as aggregated engines or an xPyD split (``prefill`` = x), with its router and rule."""

    kind: str
    gpus: int
    prefill: int = 0
    policy: str = "rr"
    rule: str | None = None

    @property
    def decode(self) -> int:
        return self.gpus - self.prefill

    @property
    def split(self) -> str:
        return "agg" if self.kind == "agg" else f"{self.prefill}P{self.decode}D"

    @property
    def label(self) -> str:
        """e.g. agg-cache, 2P6D-rr, 2P6D-vllm-ppd-cache."""
        return "-".join(p for p in (self.split, self.rule, self.policy) if p)

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"deployment kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if self.gpus < 1 or (self.kind != "agg" and self.gpus < 2):
            raise ConfigError(f"{self.split}: needs at least {1 if self.kind == 'agg' else 2} GPUs, got {self.gpus}")
        if self.kind != "agg" and not 1 <= self.prefill < self.gpus:
            raise ConfigError(f"{self.split}: an xPyD split needs x >= 1 and y >= 1 with x + y = {self.gpus}")
        if self.policy not in POLICIES:
            raise ConfigError(f"'{self.policy}' is not a router policy; valid: {', '.join(POLICIES)}")
        if (self.kind == "cond") != (self.rule is not None):
            raise ConfigError("a conditional (cond) deployment needs a rule, and only it takes one: "
                              "give an xPyD split with --rule dynamo-v0|vllm-ppd|llmd[:T]")
        if self.rule is not None:
            parse_rule(self.rule)


def parse_deployment(text: str, gpus: int | None = None, *, policy: str = "rr",
                     rule: str | None = None) -> DeploymentSpec:
    """``agg`` (needs gpus) or ``xPyD`` (gpus = x + y when given); with a rule an xPyD split is ``cond``."""
    text = text.strip()
    match = _SPLIT.match(text)
    if text.lower() == "agg":
        if gpus is None:
            raise ConfigError("an aggregated deployment needs --gpus N")
        if rule is not None:
            raise ConfigError("a rule (--rule) needs an xPyD split: conditional disaggregation has prefill engines")
        spec = DeploymentSpec("agg", gpus, policy=policy)
    elif match:
        x, y = int(match[1]), int(match[2])
        if gpus is not None and gpus != x + y:
            raise ConfigError(f"{text} is {x + y} GPUs but --gpus is {gpus}; give one or make them agree")
        spec = DeploymentSpec("cond" if rule else "pd", x + y, x, policy=policy, rule=rule)
    else:
        raise ConfigError(f"'{text}' is not a deployment; valid: agg, or an xPyD split such as 2P6D")
    spec.check()
    return spec


def candidates(gpus: int, *, policy: str = "rr", aggregated: bool = True) -> list[DeploymentSpec]:
    """Every static deployment of N GPUs: aggregated, then 1P(N-1)D ... (N-1)P1D."""
    out = [DeploymentSpec("agg", gpus, policy=policy)] if aggregated else []
    out += [DeploymentSpec("pd", gpus, x, policy=policy) for x in range(1, gpus)]
    for spec in out:
        spec.check()
    return out


@lru_cache(maxsize=64)
def engine_config(hw: Hardware, role: str) -> SimConfig:
    """The sim engine a role runs, resolved from the served sim's exact argv (cached: argv parsing is slow)."""
    spec = LaunchSpec(backend="sim", model_path=Path(hw.model), sim_gpu=gpu_spec(hw.gpu).name,
                      sim_link=link_spec(hw.link).name,
                      extra_engine_args=("--sim-link-sharing", hw.link_sharing, *hw.engine_args))
    argv = engine_argv(spec, EngineLaunch(role, 0, bootstrap_port=0 if role == "prefill" else None))
    return resolve(argv[_MODULE_ARGS:])


def build(spec: DeploymentSpec, hw: Hardware | None = None) -> RoutedDeployment:
    """A fresh deployment (empty caches, clock at 0) for one run."""
    spec.check()
    hw = hw or Hardware()
    if spec.kind == "agg":
        return RoutedDeployment(colocated=[engine_config(hw, "colocated")] * spec.gpus, policy=spec.policy)
    decode_role = "colocated" if spec.kind == "cond" else "decode"
    return RoutedDeployment(prefill=[engine_config(hw, "prefill")] * spec.prefill,
                            decode=[engine_config(hw, decode_role)] * spec.decode, policy=spec.policy,
                            rule=parse_rule(spec.rule) if spec.rule else None)
