"""The router's own Prometheus metrics (GET /metrics of `corral router`), one registry per
router. Per replica (label replica: its index, url: its base URL, and in a disaggregated router
pool: prefill or decode): requests sent, retries away from it, failures, health, outstanding
requests and KV load; routing latency (the policy's select) overall; in a disaggregated router,
what became of each request's prefill leg (DisaggregationMetrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from corral.cluster.replicas import Replica

_ROUTING_BUCKETS_S = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
)  # fmt: skip
_PREFILL_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class RouterMetrics:
    """Counters and gauges of one router; failures and retries carry a reason label
    (connect, disconnected, unavailable, stream_cut, ...). with_pool_label: the per-replica
    series also carry the replica's pool (a disaggregated router's prefill and decode replicas
    share indices)."""

    def __init__(self, *, with_pool_label: bool = False) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.with_pool_label = with_pool_label
        replica = ["pool", "replica", "url"] if with_pool_label else ["replica", "url"]
        self.requests = Counter(
            "corral:router_requests",
            "Requests sent to the replica (each retry counts on its own replica).",
            [*replica, "route"],
            registry=registry,
        )
        self.retries = Counter(
            "corral:router_retries",
            "Requests moved from the replica to another before any response byte.",
            [*replica, "reason"],
            registry=registry,
        )
        self.failures = Counter(
            "corral:router_failures",
            "Requests the replica failed (connect errors, cut streams and bodies, 5xx).",
            [*replica, "reason"],
            registry=registry,
        )
        self.healthy = Gauge(
            "corral:router_replica_healthy",
            "1 while the replica is in the rotation.",
            replica,
            registry=registry,
        )
        self.outstanding = Gauge(
            "corral:router_replica_outstanding_requests",
            "Outstanding requests as the policies see them (router's in flight + external).",
            replica,
            registry=registry,
        )
        self.kv_load = Gauge(
            "corral:router_replica_kv_cache_usage_perc",
            "The replica's KV usage from its last /metrics scrape (0-1).",
            replica,
            registry=registry,
        )
        self.no_replica = Counter(
            "corral:router_no_replica",
            "Requests answered 503 because no replica was available.",
            registry=registry,
        )
        self.routing_latency = Histogram(
            "corral:router_routing_latency_seconds",
            "Time the routing policy took to choose a replica.",
            buckets=_ROUTING_BUCKETS_S,
            registry=registry,
        )
        self._replicas: list[Replica] = []

    def _labels(self, replica: Replica) -> dict[str, str]:
        labels = {"replica": str(replica.index), "url": replica.url}
        if self.with_pool_label:
            labels["pool"] = replica.pool
        return labels

    def track(self, replicas: list[Replica]) -> None:
        """Report these replicas' load gauges at each render (as well as those tracked
        before: a disaggregated router tracks each pool)."""
        self._replicas = [*self._replicas, *replicas]

    def count_request(self, replica: Replica, route: str) -> None:
        self.requests.labels(**self._labels(replica), route=route).inc()

    def count_retry(self, replica: Replica, reason: str) -> None:
        self.retries.labels(**self._labels(replica), reason=reason).inc()

    def count_failure(self, replica: Replica, reason: str) -> None:
        self.failures.labels(**self._labels(replica), reason=reason).inc()

    def set_healthy(self, replica: Replica, healthy: bool) -> None:
        self.healthy.labels(**self._labels(replica)).set(1 if healthy else 0)

    def requests_by_replica(
        self, route: str | None = None, pool: str | None = None
    ) -> dict[int, float]:
        """Requests counted per replica index (all routes, or one; all pools, or one): for
        tests and reports."""
        counts: dict[int, float] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                labels = sample.labels
                if not sample.name.endswith("_total") or route not in (None, labels["route"]):
                    continue
                if pool in (None, labels.get("pool")):
                    index = int(sample.labels["replica"])
                    counts[index] = counts.get(index, 0.0) + sample.value
        return counts

    def render(self) -> bytes:
        for replica in self._replicas:
            labels: dict[str, Any] = self._labels(replica)
            self.outstanding.labels(**labels).set(replica.num_outstanding_requests)
            self.kv_load.labels(**labels).set(replica.kv_load)
        return generate_latest(self.registry)


class DisaggregationMetrics:
    """What became of the prefill legs of a disaggregated router (in its RouterMetrics'
    registry): done remotely, fallen back to the decode replica, or skipped; and how long the
    prefill legs that got an answer took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.remote_prefills = Counter(
            "corral:router_remote_prefills",
            "Requests whose decode replica got the prefill replica's kv_transfer_params.",
            registry=registry,
        )
        self.fallbacks = Counter(
            "corral:router_prefill_fallbacks",
            "Requests whose decode replica computed the prompt itself (reason: "
            "no_prefill_replica, prefill_failed, no_kv_transfer_params).",
            ["reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "corral:router_prefill_skipped",
            "Requests sent straight to a decode replica, no prefill leg tried (reason: "
            "unreadable_body, several_sequences, several_prompts).",
            ["reason"],
            registry=registry,
        )
        self.prefill_latency = Histogram(
            "corral:router_prefill_latency_seconds",
            "Time from a request's first prefill attempt to a prefill replica's answer "
            "(retries included; prefill legs that got no answer are not observed).",
            buckets=_PREFILL_BUCKETS_S,
            registry=registry,
        )
