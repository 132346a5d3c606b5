"""The router's view of what each replica caches, from the replicas' KV events.

One KVEventsSubscriber per replica (corral/cluster/kv_events_client.py) feeds a
ReportedPrefixIndex; the callbacks run in the subscribers' threads and are handed to the
router's event loop, so the index is only ever touched there. Replicas send block hashes in
vLLM's form (the digest's low 64 bits by default, corral/core/kv_events.py), so the index maps
the hashes the router computes from a prompt the same way before matching.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from corral.cluster.kv_events_client import KVEventsSubscriber
from corral.cluster.prefix_index import ReportedPrefixIndex
from corral.core.block_hash import BlockHash
from corral.core.kv_events import external_block_hash

logger = logging.getLogger(__name__)


class ExternalHashIndex(ReportedPrefixIndex):
    """ReportedPrefixIndex keyed by hashes as the replicas send them (block_hash_format "int",
    vLLM's default, or "bytes")."""

    def __init__(
        self, block_hash_format: str = "int", medium_weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(medium_weights)
        if block_hash_format not in ("int", "bytes"):
            raise ValueError(
                f"block_hash_format must be 'int' or 'bytes', got {block_hash_format!r}"
            )
        self.block_hash_format = block_hash_format

    def match(self, hashes: Sequence[BlockHash]) -> dict[int, int]:
        return super().match(self._external(hashes))

    def match_scores(self, hashes: Sequence[BlockHash]) -> dict[int, float]:
        return super().match_scores(self._external(hashes))

    def _external(self, hashes: Sequence[BlockHash]) -> list[BlockHash]:
        fmt = self.block_hash_format
        return [external_block_hash(h, fmt) for h in hashes]


def parse_kv_events_endpoint(spec: str) -> tuple[str, str | None]:
    """ "ENDPOINT[,REPLAY_ENDPOINT]" -> (endpoint, replay endpoint or None)."""
    endpoint, _, replay = spec.partition(",")
    if not endpoint.strip():
        raise ValueError(f"--kv-events {spec!r} is not ENDPOINT[,REPLAY_ENDPOINT]")
    return endpoint.strip(), replay.strip() or None


class KVEventFeeds:
    """Subscribers for replicas 0..n-1 (specs in backend order) feeding `index` on `loop`."""

    def __init__(self, specs: Sequence[str], index: ReportedPrefixIndex, topic: str = "") -> None:
        self.specs = [parse_kv_events_endpoint(spec) for spec in specs]
        self.index = index
        self.topic = topic
        self.subscribers: list[KVEventsSubscriber] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect every subscriber (each takes a snapshot first, when it has a replay endpoint)."""
        index = self.index
        for replica, (endpoint, replay) in enumerate(self.specs):

            def post(function, *args) -> None:  # noqa: ANN001
                loop.call_soon_threadsafe(function, *args)

            subscriber = KVEventsSubscriber(
                endpoint,
                replay,
                self.topic,
                on_stored=lambda hashes, medium, r=replica: post(
                    index.on_stored, r, hashes, medium
                ),
                on_removed=lambda hashes, medium, r=replica: post(
                    index.on_removed, r, hashes, medium
                ),
                on_cleared=lambda r=replica: post(index.on_cleared, r),
            )
            self.subscribers.append(subscriber.start())
            logger.info("replica %d: KV events from %s (replay %s)", replica, endpoint, replay)

    def stop(self) -> None:
        for subscriber in self.subscribers:
            subscriber.close()
        self.subscribers.clear()
