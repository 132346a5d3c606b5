"""The scheduling-policy plug-in interface: who waits in what order, who runs first, who yields."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

from corral.registry import Registry
from corral.request import Request


class WaitingQueue(Protocol):
    """What admission reads the waiting queue through: a policy, or a filter over one
    (corral/core/sibling_admission.py)."""

    def peek_waiting(self) -> Request | None: ...

    def pop_waiting(self) -> Request: ...

    def remove_waiting(self, request: Request) -> bool: ...


class SchedulingPolicy(ABC):
    """Orders the waiting queue and the running set, and picks preemption victims.

    The scheduler owns the token budget and the KV blocks; a policy only decides order. The
    waiting queue lives in the policy so that each can use the structure its order needs.
    The scheduler binds its clock (bind) so that policies that age requests or track deadlines
    read the same time as the scheduler, virtual in tests and in the simulator.
    """

    def __init__(self) -> None:
        self._clock: Callable[[], float] = time.monotonic

    def bind(self, clock: Callable[[], float]) -> None:
        """Use the scheduler's clock (seconds, the time base of Request.arrival_time)."""
        self._clock = clock

    def now(self) -> float:
        """The bound clock's current time in seconds."""
        return self._clock()

    @abstractmethod
    def add_waiting(self, request: Request) -> None:
        """Queue a newly arrived request."""

    @abstractmethod
    def requeue_preempted(self, request: Request) -> None:
        """Queue a request that was just preempted (it keeps its generated tokens)."""

    @abstractmethod
    def peek_waiting(self) -> Request | None:
        """The waiting request to admit next, or None when none waits."""

    @abstractmethod
    def pop_waiting(self) -> Request:
        """Remove and return what peek_waiting returned."""

    @abstractmethod
    def remove_waiting(self, request: Request) -> bool:
        """Remove a waiting request (abort). False if it was not waiting."""

    @abstractmethod
    def num_waiting(self) -> int: ...

    def waiting_in_order(self, max_num: int) -> list[Request] | None:
        """The first max_num waiting requests in the order this policy would admit them as
        things stand (for inspection: the dashboard; may sort); None where the order depends on
        state the policy changes as it admits (the caller then shows arrival order)."""
        return None

    def order_running(self, running: list[Request], now: float) -> Sequence[Request]:
        """The order in which running requests receive this step's token budget."""
        return running

    def select_victim(self, running: list[Request]) -> Request:
        """The running request to preempt when KV blocks run out (default: the newest)."""
        return running[-1]

    def victims_for(self, candidate: Request, running: list[Request]) -> list[Request]:
        """Running requests that a waiting candidate may preempt proactively (default: none)."""
        return []

    def on_step(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Request]) -> None:
        """Bookkeeping after a step was scheduled (service counters, quanta, ...).

        Called before the step runs: a request samples a token this step exactly when
        request.num_computed_tokens + num_scheduled_tokens[id] == request.num_tokens."""

    def on_request_finished(self, request: Request) -> None:
        """The request left the scheduler (finished or aborted): drop per-request state."""


SCHEDULING_POLICIES: Registry[SchedulingPolicy] = Registry("scheduling policy")
