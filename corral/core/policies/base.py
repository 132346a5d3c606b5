"""The scheduling-policy plug-in interface: who waits in what order, who runs first, who yields."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from corral.registry import Registry
from corral.request import Request


class SchedulingPolicy(ABC):
    """Orders the waiting queue and the running set, and picks preemption victims.

    The scheduler owns the token budget and the KV blocks; a policy only decides order. The
    waiting queue lives in the policy so that each can use the structure its order needs.
    """

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

    @abstractmethod
    def iter_waiting(self) -> Iterator[Request]:
        """Waiting requests in admission order."""

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
        """Bookkeeping after a step was scheduled (service counters, quanta, ...)."""


SCHEDULING_POLICIES: Registry[SchedulingPolicy] = Registry("scheduling policy")
