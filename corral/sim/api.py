"""simulate(): a workload on a deployment, to a SimReport (the library entry point)."""

from __future__ import annotations

from corral.core.slo_target import SLO
from corral.sim.cluster import ClusterSimulator, RequestHook, SimResult
from corral.sim.deployment import DeploymentOptions, build_cluster
from corral.sim.report import SimReport, build_report
from corral.workloads.spec import Workload


def simulate_result(
    workload: Workload, deployment: DeploymentOptions, request_hook: RequestHook | None = None
) -> SimResult:
    """Run the simulation; the raw result (per-request records, the instances' final state)."""
    return ClusterSimulator(build_cluster(deployment), workload, request_hook).run()


def simulate(
    workload: Workload,
    deployment: DeploymentOptions,
    slo: SLO | None = None,
    request_hook: RequestHook | None = None,
) -> SimReport:
    """Run the simulation and summarize it (metrics as `corral bench` reports them)."""
    return build_report(simulate_result(workload, deployment, request_hook), slo)
