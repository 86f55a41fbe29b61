"""Cluster studies in virtual time: P:D allocation on N GPUs, on the one deployment simulator (sim/deployment.py).

    trace = generate(WORKLOADS["chat"], requests=200, rate=12.0, seed=0)        # workload.py
    run = simulate(parse_deployment("2P6D", 8, policy="cache"), trace)          # deployments.py, runner.py
    summarize(run, Slo(ttft_ms=500, itl_ms=50)).goodput_per_gpu                # metrics.py
    StaticBest(sample=generate(WORKLOADS["chat"], seed=1)).run(trace, Study(8))  # strategy.py
    make_strategy("dynamo", WORKLOADS["seed003"], seed=0).run(trace, Study(8))  # dynamic.py, planners.py
    compare("small", workload_spec("seed003", rate=16.0), Study(8), seeds=range(3))   # compare.py

``ppd cluster`` is cli.py; Mooncake JSONL traces are trace.py; router policies and conditional
disaggregation rules are routers.py; the router itself sits on the simulator in routed.py; engines that
change role during a run are elastic.py; the report's plot is plots.py.
"""

from pytest_ppd.cluster.cli import add_arguments, cmd_cluster
from pytest_ppd.cluster.compare import Comparison, compare, write_report
from pytest_ppd.cluster.deployments import DeploymentSpec, Hardware, build, candidates, parse_deployment
from pytest_ppd.cluster.dynamic import Offline, Online
from pytest_ppd.cluster.elastic import ElasticDeployment, Resplit, Schedule
from pytest_ppd.cluster.metrics import Slo, Summary, summarize
from pytest_ppd.cluster.planners import DynamoSla, LoadBalance, ProfileModel
from pytest_ppd.cluster.runner import RequestResult, Run, simulate
from pytest_ppd.cluster.strategy import Fixed, StaticBest, Strategy, Study, across_seeds, make_strategy
from pytest_ppd.cluster.trace import BlockTokens, read_trace, write_trace
from pytest_ppd.cluster.workload import WORKLOADS, Trace, TraceRequest, WorkloadSpec, generate, workload_spec

__all__ = [
    "WORKLOADS", "BlockTokens", "Comparison", "DeploymentSpec", "DynamoSla", "ElasticDeployment", "Fixed", "Hardware",
    "LoadBalance", "Offline", "Online", "ProfileModel", "RequestResult", "Resplit", "Run", "Schedule", "Slo",
    "StaticBest", "Strategy", "Study", "Summary", "Trace", "TraceRequest", "WorkloadSpec", "across_seeds",
    "add_arguments", "build", "candidates", "cmd_cluster", "compare", "generate", "make_strategy", "parse_deployment",
    "read_trace", "simulate", "summarize", "workload_spec", "write_report", "write_trace",
]
