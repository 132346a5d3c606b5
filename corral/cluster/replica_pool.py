"""One pool of replicas behind the router: the replicas, the routing policy over them, their
health poller and, with KV events, the feeds behind the prefix-aware policy's index.

A plain router has one pool (its --backend replicas). A disaggregated router has two, prefill
and decode, each with its own policy instance, prefix index, health and load, so that a policy
such as prefix-aware follows each pool's own caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from corral.cluster.health import HealthPoller, ReplicaSet
from corral.cluster.prefix_index import (
    DEFAULT_MEDIUM_WEIGHTS,
    PrefixIndex,
    ReportedPrefixIndex,
)
from corral.cluster.replicas import Replica, make_replicas
from corral.cluster.router_metrics import RouterMetrics
from corral.cluster.routing import make_router

if TYPE_CHECKING:
    from corral.cluster.router_app import RouterConfig


@dataclass(slots=True)
class ReplicaPool:
    """A pool's replica set (replicas + policy + availability), its health poller, and its
    KV-event feeds (None without KV events)."""

    replica_set: ReplicaSet
    poller: HealthPoller
    feeds: Any = None  # KVEventFeeds (corral.cluster.kv_view needs pyzmq: imported when used)

    @property
    def replicas(self) -> list[Replica]:
        return self.replica_set.replicas

    @property
    def name(self) -> str:
        """The pool's name in a disaggregated router ("prefill", "decode"), else ""."""
        return self.replicas[0].pool

    @property
    def prefix_index(self) -> PrefixIndex | None:
        """The index the pool's policy consults (prefix-aware), else the one it was given."""
        return self.replica_set.prefix_index

    async def open(self) -> None:
        """One health round over every replica, then the KV-event feeds (each replica's
        snapshot, then its events) and the poller's loop."""
        await self.poller.check_all()
        if self.feeds is not None:
            self.feeds.start(asyncio.get_running_loop())
        self.poller.start()

    async def close(self) -> None:
        """Stop polling and the KV-event feeds."""
        await self.poller.stop()
        if self.feeds is not None:
            self.feeds.stop()


def build_pool(
    config: RouterConfig,
    urls: Sequence[str],
    kv_events: Sequence[str],
    metrics: RouterMetrics,
    client: httpx.AsyncClient,
    *,
    headers: dict[str, str],
    prefix_index: PrefixIndex | None = None,
    pool: str = "",
) -> ReplicaPool:
    """The pool over urls with config's policy and health settings. kv_events: one
    "ENDPOINT[,REPLAY]" per URL, in order, or none. prefix_index: the policy's index (default:
    from the KV events when given, else the policy's own estimate). headers: sent with the
    /metrics scrapes. pool: the pool's name in a disaggregated router ("prefill", "decode")."""
    feeds = None
    if kv_events:
        from corral.cluster.kv_view import ExternalHashIndex, KVEventFeeds  # needs pyzmq

        if len(kv_events) != len(urls):
            events_flag = "--prefill-kv-events" if pool == "prefill" else "--kv-events"
            backend_flag = f"--{pool}-backend" if pool else "--backend"
            raise ValueError(
                f"{events_flag} was given {len(kv_events)} times for {len(urls)} "
                f"{backend_flag} URLs: give one per {backend_flag}, in order"
            )
        if prefix_index is None:
            weights = {**DEFAULT_MEDIUM_WEIGHTS, **dict(config.kv_medium_weights)}
            prefix_index = ExternalHashIndex(config.kv_events_hash_format, weights)
        assert isinstance(prefix_index, ReportedPrefixIndex)
        feeds = KVEventFeeds(tuple(kv_events), prefix_index, config.kv_events_topic)
    replicas = make_replicas(
        urls,
        unhealthy_after=config.unhealthy_after,
        healthy_after=config.healthy_after,
        block_size=config.block_size,
        num_blocks=config.num_blocks,
        pool=pool,
    )
    metrics.track(replicas)
    options = {} if config.max_imbalance is None else {"max_imbalance": config.max_imbalance}
    policy = make_router(
        config.policy,
        replicas,
        seed=config.seed,
        prefix_index=prefix_index,
        prefix_hash=config.prefix_hash,
        **options,
    )
    replica_set = ReplicaSet(replicas, policy, metrics, prefix_index)
    poller = HealthPoller(
        replica_set,
        client,
        poll_interval_s=config.poll_interval_s,
        health_timeout_s=config.health_timeout_s,
        headers=headers,
    )
    return ReplicaPool(replica_set, poller, feeds)
