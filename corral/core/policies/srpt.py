"""Shortest (predicted) remaining processing time: preemptive SJF (SRPT), as in FastServe's and
Andes' length-aware preemption and the SRPT variants in the survey's request-scheduling branch.

Running requests are ranked by predicted remaining output tokens (a mispredicted request's
prediction doubles whenever it is exceeded); a waiting request with a clearly shorter remaining
time preempts the running request with the longest one when the batch or the KV cache is full.
The shared max_wait_s bound protects long jobs: once overdue they are admitted first and are no
longer preempted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.core.policies.base import SCHEDULING_POLICIES
from corral.core.policies.keyed_policy import KeyedPolicy
from corral.core.policies.lengths import predicted_remaining_tokens
from corral.request import Request


def _remaining_key(request: Request) -> tuple[int, float]:
    return (predicted_remaining_tokens(request), request.arrival_time)


@SCHEDULING_POLICIES.register("srpt")
class SRPTPolicy(KeyedPolicy):
    """Options: preempt_ratio (default 0.5): a waiting request preempts a running one only when
    its remaining tokens are below preempt_ratio times the victim's (preemption by recompute
    costs the victim's context again, so near-ties do not preempt); max_wait_s (default 60)."""

    def __init__(self, preempt_ratio: float = 0.5, max_wait_s: float | None = 60.0) -> None:
        super().__init__(max_wait_s)
        if not 0 <= preempt_ratio <= 1:
            raise ValueError(f"preempt_ratio must be in [0, 1], got {preempt_ratio}")
        self.preempt_ratio = float(preempt_ratio)

    def waiting_key(self, request: Request) -> Any:
        # Remaining work does not change while a request waits, so the key stays valid.
        return _remaining_key(request)

    def order_running(self, running: list[Request], now: float) -> Sequence[Request]:
        return sorted(running, key=_remaining_key)

    def select_victim(self, running: list[Request]) -> Request:
        return self.pick_victim(running, _remaining_key)

    def victims_for(self, candidate: Request, running: list[Request]) -> list[Request]:
        if not running or self.preempt_ratio == 0:
            return []
        threshold = predicted_remaining_tokens(candidate) / self.preempt_ratio
        victim = self.preemptible(running, _remaining_key, (threshold, float("inf")))
        return [victim] if victim is not None else []
