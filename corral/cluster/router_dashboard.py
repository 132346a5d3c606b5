"""`corral router`'s live dashboard (`--dashboard-interval-ms`, default 500; 0: off): the same
routes and page machinery as `corral serve`'s (corral/serve/dashboard/routes.py), showing the
replicas as the routing policy sees them (health, draining, requests in flight and beyond the
router's, waiting, KV usage from their last scrape) with the router's own counters per replica
(requests, retries, failures), read from the registry its /metrics renders. Each replica's row
links to that replica's own /dashboard."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI

from corral.cluster.replica_pool import ReplicaPool
from corral.cluster.router_metrics import RouterMetrics
from corral.serve.dashboard.frame_routes import install_frame_routes
from corral.serve.dashboard.publisher import FramePublisher

# Per-replica counters of the router's registry, by short name.
REPLICA_COUNTERS = {
    "corral:router_requests": "requests",
    "corral:router_retries": "retries",
    "corral:router_failures": "failures",
}


def _replica_counters(metrics: RouterMetrics) -> dict[tuple[str, str], dict[str, float]]:
    """(pool, replica index) -> {requests, retries, failures}: sums over routes and reasons."""
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for family in metrics.registry.collect():
        short = REPLICA_COUNTERS.get(family.name)
        if short is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels.get("pool", ""), sample.labels["replica"])
                row = counts.setdefault(key, {name: 0.0 for name in REPLICA_COUNTERS.values()})
                row[short] += sample.value
    return counts


def _router_totals(metrics: RouterMetrics) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                name = sample.name.removesuffix("_total")
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


class RouterFrames:
    def __init__(self, pools: list[ReplicaPool], metrics: RouterMetrics, policy: str) -> None:
        self.pools = pools
        self.metrics = metrics
        self.policy = policy

    async def frame(self) -> dict[str, Any]:
        """The replicas now and the router's counters (cumulative)."""
        counters = _replica_counters(self.metrics)
        replicas = []
        for pool in self.pools:
            for replica in pool.replicas:
                row = counters.get((replica.pool, str(replica.index)), {})
                replicas.append(
                    {
                        "index": replica.index,
                        "url": replica.url,
                        "pool": replica.pool,
                        "available": replica.is_available,
                        "draining": replica.is_draining,
                        "in_flight": replica.num_in_flight,
                        "external": replica.num_external,
                        "waiting": replica.num_waiting,
                        "kv_load": replica.kv_load,
                        "num_blocks": replica.num_blocks,
                        "last_error": replica.last_error,
                        **{name: row.get(name, 0.0) for name in REPLICA_COUNTERS.values()},
                    }
                )
        return {
            "kind": "router",
            "policy": self.policy,
            "now_s": time.monotonic(),
            "replicas": replicas,
            "counters": _router_totals(self.metrics),
        }


def install_router_dashboard(
    app: FastAPI, pools: list[ReplicaPool], metrics: RouterMetrics, policy: str, interval_ms: int
) -> FramePublisher | None:
    """The router's /dashboard routes; None (and no routes) when interval_ms is 0."""
    if interval_ms == 0:
        return None
    frames = RouterFrames(pools, metrics, policy)
    publisher = FramePublisher(frames.frame, interval_ms)
    install_frame_routes(app, publisher, frames.frame, "router.html")
    return publisher
