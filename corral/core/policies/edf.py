"""Earliest deadline first, the classic real-time rule used by SLO-aware LLM schedulers (e.g.
SLOs-Serve, Andes' deadline view): admit the waiting request whose deadline comes first.

A request's deadline is its arrival time plus Request.deadline_s (seconds, relative to arrival),
else its SLO class's deadline (class = Request.priority, from class_deadlines_s), else
default_deadline_s (none: no deadline, FCFS after every request that has one). With
demote_expired (default), a request whose deadline has already passed yields to those that can
still make theirs, which avoids EDF's domino effect under overload; the shared max_wait_s bound
still admits it eventually.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from corral.core.policies.base import SCHEDULING_POLICIES
from corral.core.policies.keyed_policy import KeyedPolicy
from corral.request import Request


def parse_class_deadlines(value: str | dict[int, float] | None) -> dict[int, float]:
    """{priority: seconds} from a dict or from "0:2.5|1:30" (the option-string form)."""
    if value is None or value == "":
        return {}
    items: list[tuple[int, float]] = []
    if isinstance(value, dict):
        items = [(int(k), float(v)) for k, v in value.items()]
    else:
        for part in str(value).split("|"):
            key, sep, seconds = part.partition(":")
            if not sep:
                raise ValueError(
                    f"class deadline {part!r} is not PRIORITY:SECONDS (e.g. 0:2.5|1:30)"
                )
            try:
                items.append((int(key), float(seconds)))
            except ValueError:
                raise ValueError(
                    f"class deadline {part!r} is not PRIORITY:SECONDS (e.g. 0:2.5|1:30)"
                ) from None
    deadlines = dict(items)
    for priority, deadline_s in deadlines.items():
        if not deadline_s > 0:
            raise ValueError(f"the deadline of class {priority} must be > 0 s, got {deadline_s}")
    return deadlines


@SCHEDULING_POLICIES.register("edf")
class EDFPolicy(KeyedPolicy):
    """Options: class_deadlines_s ("0:2.5|1:30"), default_deadline_s (none), demote_expired
    (true), preempt (false: a waiting request with an earlier deadline preempts the running
    request with the latest one when the batch is full), max_wait_s (none)."""

    def __init__(
        self,
        class_deadlines_s: str | dict[int, float] | None = None,
        default_deadline_s: float | None = None,
        demote_expired: bool = True,
        preempt: bool = False,
        max_wait_s: float | None = None,
    ) -> None:
        super().__init__(max_wait_s)
        if default_deadline_s is not None and not default_deadline_s > 0:
            raise ValueError(f"default_deadline_s must be > 0 s, got {default_deadline_s}")
        self.class_deadlines_s = parse_class_deadlines(class_deadlines_s)
        self.default_deadline_s = default_deadline_s
        self.demote_expired = bool(demote_expired)
        self.preempt = bool(preempt)
        self.num_expired = 0

    def relative_deadline_s(self, request: Request) -> float:
        if request.deadline_s is not None:
            return request.deadline_s
        seconds = self.class_deadlines_s.get(request.priority, self.default_deadline_s)
        return math.inf if seconds is None else seconds

    def deadline(self, request: Request) -> float:
        """Absolute deadline on the scheduler's clock (inf: none)."""
        return request.arrival_time + self.relative_deadline_s(request)

    def _key(self, request: Request) -> tuple[float, float]:
        return (self.deadline(request), request.arrival_time)

    def waiting_key(self, request: Request) -> Any:
        # (0, ...) can still make its deadline; (1, ...) has missed it (see peek_waiting).
        return (0, *self._key(request))

    def peek_waiting(self) -> Request | None:
        if self.demote_expired:
            now = self.now()
            while True:
                key = self._queue.peek_key()
                if key is None or key[0] == 1 or key[1] >= now:
                    break
                head = self._queue.peek()
                assert head is not None
                self._queue.push(head, (1, *key[1:]))
                self.num_expired += 1
        return super().peek_waiting()

    def order_running(self, running: list[Request], now: float) -> Sequence[Request]:
        return sorted(running, key=self._key)

    def select_victim(self, running: list[Request]) -> Request:
        return self.pick_victim(running, self._key)

    def victims_for(self, candidate: Request, running: list[Request]) -> list[Request]:
        if not self.preempt or not running:
            return []
        victim = self.preemptible(running, self._key, (self.deadline(candidate), math.inf))
        return [victim] if victim is not None else []
