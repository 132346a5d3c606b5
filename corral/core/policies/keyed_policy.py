"""KeyedPolicy: a waiting queue ordered by a per-policy key, with the shared starvation bound."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

from corral.core.policies.base import SchedulingPolicy
from corral.core.policies.keyed_queue import KeyedQueue
from corral.request import Request


def check_max_wait(max_wait_s: float | None) -> float:
    """Validate a starvation bound; None means unbounded (inf)."""
    if max_wait_s is None:
        return math.inf
    if not max_wait_s > 0:
        raise ValueError(f"max_wait_s must be > 0 seconds (or none), got {max_wait_s}")
    return float(max_wait_s)


class KeyedPolicy(SchedulingPolicy):
    """Admits waiting requests in the order of waiting_key, except that a request that has
    waited max_wait_s since its arrival is admitted first (oldest first): the anti-starvation
    bound every reordering policy shares. Such an overdue request is also never chosen as a
    victim while another candidate exists, so once admitted it runs to the end.

    Keys are computed when a request is queued (arrival or preemption) and must not depend on
    the time of the comparison; aging is expressed through the arrival time instead (see sjf).
    """

    def __init__(self, max_wait_s: float | None = None) -> None:
        super().__init__()
        self.max_wait_s = check_max_wait(max_wait_s)
        self._queue = KeyedQueue()
        self._by_arrival = KeyedQueue()
        self._peeked: Request | None = None
        self.num_starvation_admissions = 0

    @abstractmethod
    def waiting_key(self, request: Request) -> Any:
        """The request's place in the waiting queue (smaller first)."""

    # ----- the waiting queue ---------------------------------------------------------------

    def add_waiting(self, request: Request) -> None:
        self._push(request)

    def requeue_preempted(self, request: Request) -> None:
        self._push(request)

    def _push(self, request: Request) -> None:
        self._peeked = None
        self._queue.push(request, self.waiting_key(request))
        if self.max_wait_s != math.inf:
            self._by_arrival.push(request, request.arrival_time)

    def peek_waiting(self) -> Request | None:
        overdue = self._overdue()
        self._peeked = overdue if overdue is not None else self._queue.peek()
        return self._peeked

    def pop_waiting(self) -> Request:
        # Exactly what the last peek returned, even if the clock moved on since.
        request = self._peeked
        if request is None or request not in self._queue:
            request = self.peek_waiting()
        if request is None:
            raise IndexError("no request is waiting")
        if self.is_overdue(request, self.now()):
            self.num_starvation_admissions += 1
        self.remove_waiting(request)
        return request

    def remove_waiting(self, request: Request) -> bool:
        self._peeked = None
        self._by_arrival.remove(request)
        return self._queue.remove(request)

    def num_waiting(self) -> int:
        return len(self._queue)

    def waiting_in_order(self, max_num: int) -> list[Request] | None:
        # Overdue requests (waited max_wait_s) come first, oldest first; then key order.
        now = self.now()
        overdue = [r for r in self._by_arrival if self.is_overdue(r, now)][:max_num]
        ordered = overdue + [r for r in self._queue if not self.is_overdue(r, now)]
        return ordered[:max_num]

    # ----- starvation ----------------------------------------------------------------------

    def is_overdue(self, request: Request, now: float) -> bool:
        """Has the request waited max_wait_s since it arrived?"""
        return now - request.arrival_time >= self.max_wait_s

    def _overdue(self) -> Request | None:
        if self.max_wait_s == math.inf:
            return None
        oldest = self._by_arrival.peek()
        if oldest is not None and self.is_overdue(oldest, self.now()):
            return oldest
        return None

    def pick_victim(self, running: list[Request], key: Any) -> Request:
        """The running request with the largest key(request), preferring ones not overdue."""
        now = self.now()
        fresh = [r for r in running if not self.is_overdue(r, now)]
        return max(fresh or running, key=key)

    def preemptible(self, running: list[Request], key: Any, bound: Any) -> Request | None:
        """The not-overdue running request with the largest key, if that key exceeds bound."""
        now = self.now()
        fresh = [r for r in running if not self.is_overdue(r, now)]
        if not fresh:
            return None
        victim = max(fresh, key=key)
        return victim if key(victim) > bound else None
