"""Ray Serve's autoscaler driven by corral's autoscaling policy (corral/cluster/autoscaling.py)
on corral's own queue and KV metrics (torch-free, no ray import).

One policy object, two homes: the object that `corral simulate run --autoscale SPEC` calls over
simulated instances is the one Ray Serve's controller calls here, built from the same spec, so
a fleet sized in the simulator scales the same way deployed.

Each replica reports, through Ray Serve's `record_autoscaling_stats` hook, its engine's running
and waiting requests (one per sample: an n=4 request counts 4) and the fraction of its KV pool
in use. Ray averages each over `look_back_period_s` and calls CorralAutoscalingPolicy every
control-loop tick with an AutoscalingContext; the policy turns it into the arguments of
`decide(now_s, replicas, num_starting, num_queued)`:
- replicas: one ReplicaMetrics per running replica (zeros until its first report);
- num_starting: replicas Ray has been asked for but that do not run yet;
- num_queued: requests Ray counts (held at its proxies, or inside a replica but not yet in its
  engine) beyond those the engines hold.
The policy's delays (up_delay_s, down_delay_s) are the hysteresis, so Ray's own delays are set to
0 (corral.cluster.ray_serve); Ray still applies min/max and scales up from zero at once.

Ray pickles this module by value into its controller; corral must be importable there too (it is
wherever the replicas run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from corral.cluster.autoscaling import AutoscalingPolicy, ReplicaMetrics, make_autoscaling_policy

# Keys of the dict a replica's record_autoscaling_stats() returns.
NUM_RUNNING_METRIC = "corral_num_requests_running"
NUM_WAITING_METRIC = "corral_num_requests_waiting"
KV_USAGE_METRIC = "corral_kv_cache_usage"


def _value(metrics: Mapping[str, Mapping[Any, float]], name: str, replica_id: Any) -> float:
    value = metrics.get(name, {}).get(replica_id, 0.0)
    return value if math.isfinite(value) else 0.0


def replica_metrics(
    metrics: Mapping[str, Mapping[Any, float]] | None, replica_ids: list[Any]
) -> list[ReplicaMetrics]:
    """One ReplicaMetrics per replica id, from Ray's aggregated custom metrics (look-back means,
    so the counts may be fractional); zeros for a replica that has not reported yet."""
    metrics = metrics or {}
    return [
        ReplicaMetrics(
            num_running=_value(metrics, NUM_RUNNING_METRIC, replica_id),  # type: ignore[arg-type]
            num_waiting=_value(metrics, NUM_WAITING_METRIC, replica_id),  # type: ignore[arg-type]
            kv_cache_usage=_value(metrics, KV_USAGE_METRIC, replica_id),
        )
        for replica_id in replica_ids
    ]


class CorralAutoscalingPolicy:
    """A Ray Serve deployment autoscaling policy: Ray builds it once from
    policy_kwargs={"spec": AutoscalingConfig.to_spec()} and calls it with an
    AutoscalingContext every tick; it returns (desired replicas, policy state)."""

    def __init__(self, spec: str) -> None:
        self.policy: AutoscalingPolicy = make_autoscaling_policy(spec)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        replicas = replica_metrics(ctx.aggregated_metrics, list(ctx.running_replicas))
        num_in_engines = sum(replica.num_ongoing for replica in replicas)
        num_queued = max(0.0, float(ctx.total_num_requests) - num_in_engines)
        num_starting = max(0, ctx.target_num_replicas - ctx.current_num_replicas)
        now_s = ctx.current_time if ctx.current_time is not None else time.time()
        desired = self.policy.decide(now_s, replicas, num_starting, num_queued)  # type: ignore[arg-type]
        return desired, {}
