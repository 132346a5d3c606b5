"""Adapter-aware admission: a waiting request starts only when its LoRA adapter can be resident.

The policy orders the waiting queue; this sits between it and the scheduler. When the policy's
next request needs an adapter slot and every slot is pinned by running requests, that request
steps aside into `blocked` (in order) and later requests whose adapter is resident, or that use
the base model, may start instead: the S-LoRA idea of not thrashing adapters. Fairness bound: a
blocked request is overtaken at most max_num_lora_bypasses times; after that nothing overtakes it
until a slot frees. Blocked requests come first again as soon as their adapter can be loaded.
"""

from __future__ import annotations

from dataclasses import replace

from corral.config import LoRAConfig
from corral.core.adapter_residency import AdapterPlan, AdapterResidency, AdapterStats
from corral.core.policies.base import WaitingQueue
from corral.request import Request


class AdapterAdmission:
    def __init__(self, config: LoRAConfig) -> None:
        self.config = config
        self.residency = AdapterResidency(config.max_loras, config.num_cpu_loras)
        self.blocked: list[Request] = []
        self._num_bypasses: dict[str, int] = {}

    @property
    def num_blocked(self) -> int:
        return len(self.blocked)

    def peek(self, policy: WaitingQueue) -> Request | None:
        """The next request to try to admit, or None (none waits, or the fairness bound stops
        admission until a slot frees)."""
        can_acquire = self.residency.can_acquire
        for blocked in self.blocked:
            if can_acquire(blocked.lora):
                return blocked
        while True:
            request = policy.peek_waiting()
            if request is None:
                return None
            if can_acquire(request.lora):
                return None if self._bound_reached() else request
            policy.pop_waiting()
            self.blocked.append(request)
            self._num_bypasses[request.request_id] = 0

    def pop(self, policy: WaitingQueue, request: Request) -> None:
        """Take `request` (what peek returned) out of the waiting queue."""
        if request.request_id in self._num_bypasses:
            self.blocked.remove(request)
            del self._num_bypasses[request.request_id]
            return
        policy.pop_waiting()
        if self.blocked:
            self.residency.stats.num_bypasses += 1
            for blocked in self.blocked:
                self._num_bypasses[blocked.request_id] += 1

    def remove_waiting(self, request: Request) -> bool:
        """Forget a blocked request (aborted); False if it was not blocked."""
        if self._num_bypasses.pop(request.request_id, None) is None:
            return False
        self.blocked.remove(request)
        return True

    def start(self, request: Request) -> None:
        """The request starts running: pin its adapter (if any) in a compute slot."""
        if request.lora is not None:
            request.lora_slot = self.residency.acquire(request.lora)

    def stop(self, request: Request) -> None:
        """The request stopped running (finished, aborted or preempted): unpin its adapter."""
        if request.lora_slot is not None and request.lora is not None:
            self.residency.release(request.lora.key)
            request.lora_slot = None

    def take_plan(self) -> AdapterPlan | None:
        return self.residency.take_plan()

    def stats(self) -> AdapterStats:
        """The counters so far, with the gauges of now."""
        residency = self.residency
        return replace(
            residency.stats,
            num_resident=residency.num_resident,
            num_in_use=residency.num_in_use,
            running_adapter_names=tuple(
                sorted(key.rpartition("@")[0] for key in residency.running_keys())
            ),
        )

    def _bound_reached(self) -> bool:
        limit = self.config.max_num_lora_bypasses
        return any(count >= limit for count in self._num_bypasses.values())
