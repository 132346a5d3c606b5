"""First come, first served: the baseline every serving system starts from (vLLM, Orca)."""

from __future__ import annotations

import itertools
from collections import OrderedDict

from corral.core.policies.base import SCHEDULING_POLICIES, SchedulingPolicy
from corral.request import Request


@SCHEDULING_POLICIES.register("fcfs")
class FCFSPolicy(SchedulingPolicy):
    """Admit in arrival order; a preempted request goes back to the front; the newest running
    request is the preemption victim."""

    def __init__(self) -> None:
        super().__init__()
        # An ordered dict gives O(1) append, pop-front, push-front and removal by id.
        self._waiting: OrderedDict[str, Request] = OrderedDict()

    def add_waiting(self, request: Request) -> None:
        self._waiting[request.request_id] = request

    def requeue_preempted(self, request: Request) -> None:
        self._waiting[request.request_id] = request
        self._waiting.move_to_end(request.request_id, last=False)

    def peek_waiting(self) -> Request | None:
        if not self._waiting:
            return None
        return next(iter(self._waiting.values()))

    def pop_waiting(self) -> Request:
        return self._waiting.popitem(last=False)[1]

    def remove_waiting(self, request: Request) -> bool:
        return self._waiting.pop(request.request_id, None) is not None

    def num_waiting(self) -> int:
        return len(self._waiting)

    def waiting_in_order(self, max_num: int) -> list[Request] | None:
        return list(itertools.islice(self._waiting.values(), max_num))
