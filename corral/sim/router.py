"""Router policies: which instance of a pool gets each arriving request.

A policy reads the instances' live load (num_outstanding_requests, kv_load) at the moment a
request arrives. Registered by name:
- round-robin: instances in turn;
- least-outstanding: fewest queued + running requests (ties: lower KV load, then in turn);
- least-kv: lowest KV load (blocks in use plus blocks the queued prompts need, over the pool);
- power-of-two: two instances drawn at random (seeded), the one with fewer outstanding requests;
- prefix-aware: the instance holding the longest prefix of the prompt's blocks, unless it has
  more than max_imbalance outstanding requests above the least loaded one, whose turn it then is.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from corral.registry import Registry
from corral.request import Request


class InstanceLoad(Protocol):
    @property
    def num_outstanding_requests(self) -> int: ...

    @property
    def kv_load(self) -> float: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def block_size(self) -> int: ...


class RouterPolicy(ABC):
    def __init__(self, instances: Sequence[InstanceLoad], seed: int = 0) -> None:
        if not instances:
            raise ValueError("a router needs at least one instance")
        self.instances = instances
        self.rng = random.Random(seed)
        self._tie_offset = -1

    @abstractmethod
    def select(self, request: Request) -> int:
        """The index (in this router's pool) of the instance that gets the request."""

    def _least_outstanding(self, indices: Sequence[int]) -> int:
        """Fewest outstanding requests, then lowest KV load; exact ties go round robin."""
        instances = self.instances
        self._tie_offset = (self._tie_offset + 1) % len(instances)
        offset, size = self._tie_offset, len(instances)
        return min(
            indices,
            key=lambda i: (
                instances[i].num_outstanding_requests,
                instances[i].kv_load,
                (i - offset) % size,
            ),
        )


ROUTER_POLICIES: Registry[RouterPolicy] = Registry("router policy")


@ROUTER_POLICIES.register("round-robin")
class RoundRobin(RouterPolicy):
    def __init__(self, instances: Sequence[InstanceLoad], seed: int = 0) -> None:
        super().__init__(instances, seed)
        self._next = 0

    def select(self, request: Request) -> int:
        index = self._next
        self._next = (index + 1) % len(self.instances)
        return index


@ROUTER_POLICIES.register("least-outstanding")
class LeastOutstanding(RouterPolicy):
    def select(self, request: Request) -> int:
        return self._least_outstanding(range(len(self.instances)))


@ROUTER_POLICIES.register("least-kv")
class LeastKVLoad(RouterPolicy):
    def select(self, request: Request) -> int:
        instances = self.instances
        return min(
            range(len(instances)),
            key=lambda i: (instances[i].kv_load, instances[i].num_outstanding_requests, i),
        )


@ROUTER_POLICIES.register("power-of-two")
class PowerOfTwoChoices(RouterPolicy):
    def select(self, request: Request) -> int:
        if len(self.instances) == 1:
            return 0
        return self._least_outstanding(self.rng.sample(range(len(self.instances)), 2))


@ROUTER_POLICIES.register("prefix-aware")
class PrefixAware(RouterPolicy):
    """Keeps, per instance, an LRU of the block hashes of the prompts sent there (as many as
    the instance has KV blocks): an estimate of its prefix cache that costs no instance query."""

    def __init__(
        self, instances: Sequence[InstanceLoad], seed: int = 0, max_imbalance: int = 8
    ) -> None:
        super().__init__(instances, seed)
        self.max_imbalance = max_imbalance
        self.block_size = instances[0].block_size
        self._owners: dict[int, set[int]] = {}
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in instances]

    def block_hashes(self, token_ids: Sequence[int]) -> list[int]:
        size = self.block_size
        hashes, parent = [], 0
        for start in range(0, len(token_ids) - size + 1, size):
            parent = hash((parent, tuple(token_ids[start : start + size])))
            hashes.append(parent)
        return hashes

    def select(self, request: Request) -> int:
        hashes = self.block_hashes(request.prompt_token_ids)
        candidates: set[int] | None = None
        for block_hash in hashes:
            owners = self._owners.get(block_hash)
            narrowed = owners if candidates is None else (candidates & owners if owners else None)
            if not narrowed:
                break
            candidates = narrowed
        least = self._least_outstanding(range(len(self.instances)))
        chosen = least
        if candidates:
            best = self._least_outstanding(sorted(candidates))
            load = self.instances[best].num_outstanding_requests
            if load <= self.instances[least].num_outstanding_requests + self.max_imbalance:
                chosen = best
        self._remember(chosen, hashes)
        return chosen

    def _remember(self, index: int, hashes: list[int]) -> None:
        lru = self._lru[index]
        for block_hash in hashes:
            if block_hash in lru:
                lru.move_to_end(block_hash)
            else:
                lru[block_hash] = None
                self._owners.setdefault(block_hash, set()).add(index)
        capacity = self.instances[index].num_blocks
        while len(lru) > capacity:
            evicted, _ = lru.popitem(last=False)
            owners = self._owners[evicted]
            owners.discard(index)
            if not owners:
                del self._owners[evicted]


def make_router(name: str, instances: Sequence[InstanceLoad], seed: int = 0) -> RouterPolicy:
    return ROUTER_POLICIES.get(name)(instances, seed)
