"""Priority scheduling: the request field `priority`, smaller numbers first (vLLM's convention:
priority 0 runs before priority 1), arrival order among equals. A waiting request of a strictly
higher priority (smaller number) may preempt the lowest-priority running request when the batch
or the KV cache is full, as in vLLM's priority scheduler and Andes/Llumnix-style priorities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from corral.core.policies.base import SCHEDULING_POLICIES
from corral.core.policies.keyed_policy import KeyedPolicy
from corral.request import Request


def _priority_key(request: Request) -> tuple[int, float]:
    return (request.priority, request.arrival_time)


@SCHEDULING_POLICIES.register("priority")
class PriorityPolicy(KeyedPolicy):
    """Strict priorities with optional preemption.

    Options: preempt (default true): a waiting request preempts running work of a lower
    priority; max_wait_s (default none): the shared starvation bound, after which a request is
    admitted ahead of higher priorities.
    """

    def __init__(self, preempt: bool = True, max_wait_s: float | None = None) -> None:
        super().__init__(max_wait_s)
        self.preempt = bool(preempt)

    def waiting_key(self, request: Request) -> Any:
        return _priority_key(request)

    def order_running(self, running: list[Request], now: float) -> Sequence[Request]:
        return sorted(running, key=_priority_key)

    def select_victim(self, running: list[Request]) -> Request:
        return self.pick_victim(running, _priority_key)

    def victims_for(self, candidate: Request, running: list[Request]) -> list[Request]:
        if not self.preempt or not running:
            return []
        # Only a strictly lower priority yields; equal priorities keep arrival order.
        victim = self.preemptible(running, _priority_key, (candidate.priority, math.inf))
        return [victim] if victim is not None else []
