"""corral's routing policies inside Ray Serve: a Ray request router for the replicas.

corral's Ray ingress (corral.cluster.ray_ingress) calls the replicas through a deployment
handle with the request's RoutingRequest attached; Ray asks this router which replica takes it,
and the router asks the policy of corral.cluster.routing (the one `corral router` and the
simulator run) over the replicas Ray reports. So `--policy prefix-aware` sends a conversation
back to the replica that cached its prefix on Ray as it does on one machine.

What the policy reads of each replica (ReplicaLoad): its outstanding requests (counted here,
from the requests this router sent and Ray reported completed; each ingress replica counts its
own), its KV usage, pool size and block size (from the replica's record_routing_stats, pushed
every RequestRouterConfig.request_routing_stats_period_s; until then the engine config's).
Replicas that come and go (autoscaling, failures) keep their slot in the policy while they run;
a replica that leaves is marked unavailable and its estimated cache cleared.

The router answers Ray with ranks: the policy's replica first, then every other replica (Ray
takes the least loaded of those if the first is at its max_ongoing_requests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from corral.cluster.prefix_index import EstimatedPrefixIndex
from corral.cluster.ray_messages import ForwardedRequest
from corral.cluster.routing import RouterPolicy, RoutingRequest, make_router

logger = logging.getLogger(__name__)

# Keys of a replica's record_routing_stats (corral.cluster.ray_replica).
KV_USAGE_STAT = "kv_cache_usage"
NUM_BLOCKS_STAT = "num_blocks"
BLOCK_SIZE_STAT = "block_size"


@dataclass(slots=True)
class _ReplicaSlot:
    """A replica as the policy sees it (corral.cluster.routing.ReplicaLoad)."""

    num_blocks: int
    block_size: int
    num_outstanding_requests: int = 0
    kv_load: float = 0.0


class CorralRequestRouter(RequestRouter):
    """Ray Serve request router running a corral routing policy (module docstring).
    request_router_kwargs: policy (a corral.cluster.routing.ROUTER_POLICIES name), block_size,
    num_blocks, prefix_hash (the replicas' engine config), seed, options (the policy's)."""

    def initialize_state(  # type: ignore[override]
        self,
        policy: str = "least-outstanding",
        block_size: int = 16,
        num_blocks: int = 1024,
        prefix_hash: str = "sha256",
        seed: int = 0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._policy_name = policy
        self._policy_options = dict(options or {})
        self._seed = seed
        self._prefix_hash = prefix_hash
        self._default_blocks = (num_blocks, block_size)
        self._slots: list[_ReplicaSlot] = []
        self._slot_of: dict[ReplicaID, int] = {}
        self._replica_at: list[ReplicaID | None] = []
        self._prefix_index = EstimatedPrefixIndex(self._slots)
        self._policy: RouterPolicy | None = None
        self._slot_of_request: dict[str, int] = {}
        # Fail at deployment, naming the policy or option, rather than at the first request.
        make_router(policy, [_ReplicaSlot(num_blocks, block_size)], seed, **self._options())

    def _options(self) -> dict[str, Any]:
        return {"prefix_hash": self._prefix_hash, **self._policy_options}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """The policy's replica, then the others (see the module docstring)."""
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # retry after a pause
        if not candidate_replicas:
            return []
        policy = self._sync(candidate_replicas)
        index = policy.select(_routing_request(pending_request))
        chosen_id = self._replica_at[index]
        first = [r for r in candidate_replicas if r.replica_id == chosen_id]
        rest = [r for r in candidate_replicas if r.replica_id != chosen_id]
        return [first, rest]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        slot = self._slot_of.get(replica_id)
        if slot is None:
            return
        self._slots[slot].num_outstanding_requests += 1
        self._slot_of_request[pending_request.metadata.internal_request_id] = slot

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        slot = self._slot_of_request.pop(internal_request_id, None)
        if slot is not None and self._slots[slot].num_outstanding_requests > 0:
            self._slots[slot].num_outstanding_requests -= 1

    def _sync(self, candidates: list[RunningReplica]) -> RouterPolicy:
        """The policy over every slot, those of the candidates available, their loads fresh."""
        is_new = False
        for replica in candidates:
            if replica.replica_id not in self._slot_of:
                self._slot_of[replica.replica_id] = len(self._slots)
                self._slots.append(_ReplicaSlot(*self._default_blocks))
                self._replica_at.append(replica.replica_id)
                is_new = True
        policy = self._policy
        if policy is None or is_new:
            policy = make_router(
                self._policy_name, self._slots, self._seed, self._prefix_index, **self._options()
            )
            self._policy = policy
        current = {r.replica_id for r in candidates}
        for replica_id, slot in self._slot_of.items():
            available = replica_id in current
            if policy.is_available(slot) and not available:
                self._prefix_index.on_cleared(slot)  # gone: its cache is not there to hit
            policy.set_available(slot, available)
        for replica in candidates:
            _read_stats(self._slots[self._slot_of[replica.replica_id]], replica.routing_stats)
        return policy


def _read_stats(slot: _ReplicaSlot, stats: dict[str, Any] | None) -> None:
    if not stats:
        return
    slot.kv_load = float(stats.get(KV_USAGE_STAT, slot.kv_load))
    slot.num_blocks = int(stats.get(NUM_BLOCKS_STAT, slot.num_blocks))
    slot.block_size = int(stats.get(BLOCK_SIZE_STAT, slot.block_size))


def _routing_request(pending_request: PendingRequest | None) -> RoutingRequest:
    if pending_request is not None and pending_request.args:
        forwarded = pending_request.args[0]
        if isinstance(forwarded, ForwardedRequest):
            return forwarded.routing
    return RoutingRequest(())
