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
    """Run the simulation; the raw result (per-request records, the instances' final state).
    ValueError for requests with n > 1 on a disaggregated deployment (a KV transfer carries one
    sample's KV: the real router's prefill engine refuses them too)."""
    cluster = build_cluster(deployment)
    if cluster.is_disaggregated:
        sampled = next((s for s in workload.specs if s.samples_per_request > 1), None)
        if sampled is not None:
            raise ValueError(
                f"request {sampled.request_id!r} asks for {sampled.samples_per_request} samples; "
                "a disaggregated deployment serves samples_per_request 1 only"
            )
    return ClusterSimulator(cluster, workload, request_hook).run()


def simulate(
    workload: Workload,
    deployment: DeploymentOptions,
    slo: SLO | None = None,
    request_hook: RequestHook | None = None,
) -> SimReport:
    """Run the simulation and summarize it (metrics as `corral bench` reports them)."""
    return build_report(simulate_result(workload, deployment, request_hook), slo)
