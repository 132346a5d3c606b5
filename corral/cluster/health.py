"""Which replicas are in the rotation: the health poller and the one place that changes it.

Every poll_interval_s each replica's /health is checked (a 200 within health_timeout_s is a
healthy check; anything else, a failed one) and, while healthy, its /metrics scraped for load.
HealthState turns the checks into availability; ReplicaSet applies each change to the routing
policy, the router's metrics and the prefix index.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import httpx

from corral.cluster.prefix_index import PrefixIndex
from corral.cluster.replicas import Replica, parse_metrics
from corral.cluster.router_metrics import RouterMetrics
from corral.cluster.routing import RouterPolicy, RoutingRequest

logger = logging.getLogger(__name__)


class ReplicaSet:
    """The replicas, the routing policy over them, and their availability (kept equal in the
    replicas' HealthState and the policy)."""

    def __init__(
        self,
        replicas: list[Replica],
        policy: RouterPolicy,
        metrics: RouterMetrics,
        prefix_index: PrefixIndex | None = None,
    ) -> None:
        self.replicas = replicas
        self.policy = policy
        self.metrics = metrics
        # The index the policy consults, when it has one (prefix-aware), else prefix_index.
        self.prefix_index = getattr(policy, "prefix_index", None) or prefix_index
        for replica in replicas:
            self._apply(replica, replica.is_available)

    @property
    def num_available(self) -> int:
        return sum(1 for replica in self.replicas if replica.is_available)

    def select(self, request: RoutingRequest, tried: set[int]) -> Replica | None:
        """The policy's choice, or, when it chose a replica this request already tried, the
        least loaded available one not tried; None when no available replica is left."""
        start = time.perf_counter()
        try:
            index = self.policy.select(request)
        except RuntimeError:  # none available
            return None
        finally:
            self.metrics.routing_latency.observe(time.perf_counter() - start)
        if index not in tried:
            return self.replicas[index]
        return self.pick_any(tried)

    def pick_any(self, tried: Iterable[int] = ()) -> Replica | None:
        """The available replica with the fewest outstanding requests, skipping tried."""
        skip = set(tried)
        candidates = [r for r in self.replicas if r.is_available and r.index not in skip]
        return min(candidates, key=lambda r: r.num_outstanding_requests, default=None)

    def record_check(self, replica: Replica, is_healthy: bool, reason: str | None) -> None:
        replica.last_error = reason
        changed = replica.health.record(is_healthy)
        if changed is not None:
            self._log_change(replica, changed, reason)
            self._apply(replica, replica.is_available)

    def set_draining(self, replica: Replica, draining: bool) -> None:
        """Take a replica out of the rotation (draining) or bring it back."""
        replica.is_draining = draining
        logger.info("replica %d (%s) %s", replica.index, replica.url,
                    "drains" if draining else "is back from draining")  # fmt: skip
        self._apply(replica, replica.is_available)

    def eject(self, replica: Replica, reason: str) -> None:
        """Out of the rotation at once: the router could not reach it. The poller puts it back
        after healthy_after healthy checks."""
        replica.last_error = reason
        if replica.health.eject():
            self._log_change(replica, False, reason)
            self._apply(replica, False)

    def _apply(self, replica: Replica, available: bool) -> None:
        self.policy.set_available(replica.index, available)
        self.metrics.set_healthy(replica, available)
        if not available and self.prefix_index is not None:
            # A replica that went away may come back restarted, with an empty cache.
            self.prefix_index.on_cleared(replica.index)

    @staticmethod
    def _log_change(replica: Replica, available: bool, reason: str | None) -> None:
        if available:
            logger.info("replica %d (%s) joins the rotation", replica.index, replica.url)
        else:
            logger.warning(
                "replica %d (%s) leaves the rotation: %s", replica.index, replica.url, reason
            )


class HealthPoller:
    """One task per replica: check /health, scrape /metrics, sleep to the next interval."""

    def __init__(
        self,
        replica_set: ReplicaSet,
        client: httpx.AsyncClient,
        *,
        poll_interval_s: float,
        health_timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        if poll_interval_s <= 0 or health_timeout_s <= 0:
            raise ValueError(
                f"poll_interval_s and health_timeout_s must be > 0, got {poll_interval_s} and "
                f"{health_timeout_s}"
            )
        self.replica_set = replica_set
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.health_timeout_s = health_timeout_s
        # Sent with the /metrics scrape (an API key, when the replicas require one).
        self.headers = headers or {}
        self._tasks: list[asyncio.Task[None]] = []

    async def check_all(self) -> None:
        """One round over every replica at once (the router's start-up)."""
        await asyncio.gather(*(self.check(r) for r in self.replica_set.replicas))

    async def check(self, replica: Replica) -> None:
        """One health check and, when healthy, one scrape."""
        try:
            response = await self.client.get(replica.url + "/health", timeout=self.health_timeout_s)
            reason = None if response.status_code == 200 else _status_reason(response)
        except httpx.HTTPError as error:
            reason = f"/health: {type(error).__name__}: {error}".rstrip(": ")
        self.replica_set.record_check(replica, reason is None, reason)
        if reason is None:
            await self._scrape(replica)

    async def _scrape(self, replica: Replica) -> None:
        try:
            response = await self.client.get(
                replica.url + "/metrics", headers=self.headers, timeout=self.health_timeout_s
            )
            response.raise_for_status()
            replica.apply_scrape(parse_metrics(response.text))
        except (httpx.HTTPError, ValueError) as error:  # load stays at its last values
            logger.debug("replica %d: /metrics scrape failed: %s", replica.index, error)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(replica), name=f"health-{replica.index}")
            for replica in self.replica_set.replicas
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, replica: Replica) -> None:
        while True:
            start = time.monotonic()
            try:
                await self.check(replica)
            except Exception:  # a bug here must not stop the polling
                logger.exception("health check of replica %d failed", replica.index)
            await asyncio.sleep(max(0.0, self.poll_interval_s - (time.monotonic() - start)))


def _status_reason(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"/health answered {response.status_code}: {message}".rstrip(": ")
