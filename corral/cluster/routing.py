"""Routing policies: which replica of a pool gets each arriving request (torch-free).

One code path for the simulator (corral/sim/cluster.py routes over SimInstances) and the real
router (over live replica states). A policy reads the replicas' live load at the moment a request
arrives (ReplicaLoad) and is a plug-in registered by name in ROUTER_POLICIES:
- round-robin: replicas in turn;
- least-outstanding: fewest queued + running requests (ties: lower KV load, then in turn);
- least-kv: lowest KV load (blocks in use plus blocks the queued prompts need, over the pool);
- power-of-two: two replicas drawn at random (seeded), the one with fewer outstanding requests;
- prefix-aware: the replica holding the best prefix of the prompt's blocks (a PrefixIndex: the
  longest, each block weighted by the medium it is held in when the index knows media), unless it
  has more than max_imbalance outstanding requests above the least loaded one, whose turn it then
  is.
A replica marked unavailable (set_available(i, False), e.g. unhealthy) is skipped by every policy.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from corral.cluster.prefix_index import EstimatedPrefixIndex, PrefixIndex
from corral.core.block_hash import BLOCK_HASH_FNS, BlockHash, BlockHashFn
from corral.registry import Registry


class ReplicaLoad(Protocol):
    """What a policy reads of a replica, live (attributes or read-only properties)."""

    @property
    def num_outstanding_requests(self) -> int:
        """Queued + running requests."""
        ...

    @property
    def kv_load(self) -> float:
        """Fraction of the KV pool in use (may exceed 1 counting the queued prompts' demand)."""
        ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def block_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """What a policy reads of a request."""

    prompt_token_ids: Sequence[int]  # the full templated prompt's token ids
    # Extra keys of the block hashes, as the replica's KV manager uses them.
    adapter_id: str | None = None
    cache_salt: str | None = None


def prompt_block_hashes(
    request: RoutingRequest, block_size: int, prefix_hash: str = "sha256"
) -> list[BlockHash]:
    """The chained hashes of the prompt's full blocks, exactly as a replica's KVCacheManager
    computes them (request.block_hashes there): parent None for block 0, extra keys
    (adapter_id, cache_salt) on block 0 only and only when one of them is set."""
    hash_fn = _hash_fn(prefix_hash)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    tokens = request.prompt_token_ids
    extra = (request.adapter_id, request.cache_salt)
    has_extra = extra != (None, None)
    hashes: list[BlockHash] = []
    parent: BlockHash | None = None
    for index in range(len(tokens) // block_size):
        block_extra = extra if (index == 0 and has_extra) else ()
        parent = hash_fn(parent, tokens[index * block_size : (index + 1) * block_size], block_extra)
        hashes.append(parent)
    return hashes


def _hash_fn(prefix_hash: str) -> BlockHashFn:
    hash_fn = BLOCK_HASH_FNS.get(prefix_hash)
    if hash_fn is None:
        known = sorted(BLOCK_HASH_FNS)
        raise ValueError(f"prefix_hash must be one of {known}, got {prefix_hash!r}")
    return hash_fn


class RouterPolicy(ABC):
    """Chooses a replica per request. prefix_index and prefix_hash (the replicas' KV managers'
    hash, "sha256" or "builtin") are accepted by every policy and used by those that look at
    prompts; other options are the policy's own, and an unknown one is a ValueError."""

    def __init__(
        self,
        replicas: Sequence[ReplicaLoad],
        seed: int = 0,
        prefix_index: PrefixIndex | None = None,
        *,
        prefix_hash: str = "sha256",
        **options: Any,
    ) -> None:
        if not replicas:
            raise ValueError("a router needs at least one replica")
        if options:
            raise ValueError(f"{type(self).__name__} has no option(s) {sorted(options)}")
        _hash_fn(prefix_hash)
        self.replicas = replicas
        self.rng = random.Random(seed)
        self.prefix_index = prefix_index
        self.prefix_hash = prefix_hash
        self._is_available = [True] * len(replicas)
        # Indices of the available replicas, ascending; rebuilt by set_available.
        self._available: list[int] = list(range(len(replicas)))
        self._tie_offset = -1

    @abstractmethod
    def select(self, request: RoutingRequest) -> int:
        """The index (in this router's replicas) of the available replica that gets the
        request; RuntimeError when none is available."""

    def set_available(self, index: int, available: bool) -> None:
        """Take a replica out of every policy's choice (False) or put it back (True)."""
        if not 0 <= index < len(self.replicas):
            raise ValueError(f"replica index {index} is outside 0..{len(self.replicas) - 1}")
        self._is_available[index] = available
        self._available = [i for i, ok in enumerate(self._is_available) if ok]

    def is_available(self, index: int) -> bool:
        return self._is_available[index]

    def available_indices(self) -> list[int]:
        """The available replicas' indices, ascending; RuntimeError when there is none."""
        if not self._available:
            raise RuntimeError("no replica available")
        return self._available

    def _least_outstanding(self, indices: Sequence[int]) -> int:
        """Fewest outstanding requests, then lowest KV load; exact ties go round robin."""
        replicas = self.replicas
        self._tie_offset = (self._tie_offset + 1) % len(replicas)
        offset, size = self._tie_offset, len(replicas)
        return min(
            indices,
            key=lambda i: (
                replicas[i].num_outstanding_requests,
                replicas[i].kv_load,
                (i - offset) % size,
            ),
        )


ROUTER_POLICIES: Registry[RouterPolicy] = Registry("router policy")
_SCORE_TOLERANCE = 1e-9


@ROUTER_POLICIES.register("round-robin")
class RoundRobin(RouterPolicy):
    def __init__(
        self,
        replicas: Sequence[ReplicaLoad],
        seed: int = 0,
        prefix_index: PrefixIndex | None = None,
        **options: Any,
    ) -> None:
        super().__init__(replicas, seed, prefix_index, **options)
        self._next = 0

    def select(self, request: RoutingRequest) -> int:
        self.available_indices()  # raises when none is
        size = len(self.replicas)
        index = self._next
        while not self._is_available[index]:
            index = (index + 1) % size
        self._next = (index + 1) % size
        return index


@ROUTER_POLICIES.register("least-outstanding")
class LeastOutstanding(RouterPolicy):
    def select(self, request: RoutingRequest) -> int:
        return self._least_outstanding(self.available_indices())


@ROUTER_POLICIES.register("least-kv")
class LeastKVLoad(RouterPolicy):
    def select(self, request: RoutingRequest) -> int:
        replicas = self.replicas
        return min(
            self.available_indices(),
            key=lambda i: (replicas[i].kv_load, replicas[i].num_outstanding_requests, i),
        )


@ROUTER_POLICIES.register("power-of-two")
class PowerOfTwoChoices(RouterPolicy):
    def select(self, request: RoutingRequest) -> int:
        available = self.available_indices()
        if len(available) == 1:
            return available[0]
        return self._least_outstanding(self.rng.sample(available, 2))


@ROUTER_POLICIES.register("prefix-aware")
class PrefixAware(RouterPolicy):
    """Best prefix match in the prefix index (default: an EstimatedPrefixIndex of what this
    router sent where): the highest match_scores, i.e. the longest match with each block weighted
    by the medium holding it (a replica's device pool 1.0, its host or disk tier less); ties by
    least outstanding; every routed prompt is reported to the index. Replicas are assumed to
    share one block size (the first replica's, read live)."""

    prefix_index: PrefixIndex

    def __init__(
        self,
        replicas: Sequence[ReplicaLoad],
        seed: int = 0,
        prefix_index: PrefixIndex | None = None,
        *,
        max_imbalance: int = 8,
        **options: Any,
    ) -> None:
        if prefix_index is None:
            prefix_index = EstimatedPrefixIndex(replicas)
        super().__init__(replicas, seed, prefix_index, **options)
        if max_imbalance < 0:
            raise ValueError(f"max_imbalance must be >= 0, got {max_imbalance}")
        self.max_imbalance = max_imbalance

    def select(self, request: RoutingRequest) -> int:
        available = self.available_indices()
        hashes = prompt_block_hashes(request, self.replicas[0].block_size, self.prefix_hash)
        scores = self.prefix_index.match_scores(hashes)
        best_score = max((s for i, s in scores.items() if self._is_available[i]), default=0.0)
        least = self._least_outstanding(available)
        chosen = least
        if best_score > 0.0:
            # Scores are sums of weights: equal ones may differ in the last bits.
            candidates = sorted(
                i
                for i, s in scores.items()
                if s >= best_score - _SCORE_TOLERANCE and self._is_available[i]
            )
            best = self._least_outstanding(candidates)
            load = self.replicas[best].num_outstanding_requests
            if load <= self.replicas[least].num_outstanding_requests + self.max_imbalance:
                chosen = best
        self.prefix_index.on_routed(chosen, hashes)
        return chosen


def make_router(
    name: str,
    replicas: Sequence[ReplicaLoad],
    seed: int = 0,
    prefix_index: PrefixIndex | None = None,
    **options: Any,
) -> RouterPolicy:
    """The registered policy `name` over `replicas` (ValueError naming the known ones)."""
    return ROUTER_POLICIES.get(name)(replicas, seed, prefix_index, **options)
