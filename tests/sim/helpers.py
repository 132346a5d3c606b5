"""Builders for simulator tests: a hand-written profile, scripted workloads, small clusters."""

from __future__ import annotations

from corral.config import SchedulerConfig
from corral.sim.cluster import ClusterSimulator, SimResult
from corral.sim.config import ClusterSpec, InstanceSpec
from corral.sim.cost.profiled import ProfiledCostModel
from corral.workloads.spec import RequestSpec, Workload

# step time = 10 ms + 1 ms per token computed
LINEAR_PROFILE = ProfiledCostModel(["intercept", "tokens"], [0.010, 0.001])


def spec(
    request_id: str, arrival_s: float, num_prompt: int, num_output: int, **fields
) -> RequestSpec:
    return RequestSpec(request_id, arrival_s, num_prompt, num_output, **fields)


def workload(*specs: RequestSpec, vocab_size: int = 1000) -> Workload:
    return Workload("scripted", list(specs), vocab_size)


def instance(
    cost_model=LINEAR_PROFILE,
    num_blocks: int = 256,
    max_model_len: int = 1024,
    role: str = "mixed",
    enable_prefix_caching: bool = True,
    **scheduler_fields,
) -> InstanceSpec:
    return InstanceSpec(
        cost_model=cost_model,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        block_size=16,
        scheduler=SchedulerConfig(**scheduler_fields),
        enable_prefix_caching=enable_prefix_caching,
        role=role,
        kv_bytes_per_token=1000,
    )


def run(cluster: ClusterSpec, work: Workload) -> SimResult:
    return ClusterSimulator(cluster, work).run()
