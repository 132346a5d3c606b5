"""Sibling admission: the samples of one n > 1 request compute their shared prompt once.

make_requests turns a request with n > 1 into n Requests with the same prompt and the same
sibling_group. Admitted together, each would compute the whole prompt in the same step (the
prefix cache registers a block only once it is computed). This sits between the policy's waiting
queue and the scheduler: while one sibling (the "leader") runs and has not yet computed the
prompt's full blocks, the other siblings step aside into `deferred` (in order). Once the leader
has computed them, update() has registered them in the prefix cache, and the deferred siblings are
admitted with those blocks as prefix hits (shared, reference-counted): each computes only the tail
after the last full block, in a block of its own (the block-granular prefix cache is the copy on
write at the first block the samples may differ in).

Never a deadlock: a deferred sibling is ready again as soon as no sibling of its group is running
with prompt blocks still to compute (the leader computed them, or was preempted, aborted or
finished), and ready deferred requests come before the policy's queue, as they were at its head.
Requests that could not take prefix hits (prompt logprobs) are never deferred.
"""

from __future__ import annotations

from corral.core.policies import SchedulingPolicy
from corral.request import Request, RequestStatus


class SiblingAdmission:
    """A waiting queue over the policy's (peek_waiting / pop_waiting / remove_waiting) that holds
    back a sibling whose prompt another sibling is computing."""

    def __init__(self, policy: SchedulingPolicy, block_size: int) -> None:
        self.policy = policy
        self.block_size = block_size
        # Siblings waiting for their leader's prompt blocks, in the order they stepped aside.
        self.deferred: list[Request] = []
        # sibling_group -> the running sibling computing the group's prompt.
        self._leaders: dict[str, Request] = {}
        self._peeked_deferred: Request | None = None
        self.num_deferrals = 0  # times a sibling stepped aside (a counter, for tests and reports)

    @property
    def num_deferred(self) -> int:
        return len(self.deferred)

    def peek_waiting(self) -> Request | None:
        """The next request to try to admit: the first deferred sibling that is ready again, else
        the policy's next request (siblings still to wait step aside on the way)."""
        self._peeked_deferred = None
        self._prune()
        for request in self.deferred:
            if self._leader_of(request) is None:
                self._peeked_deferred = request
                return request
        while True:
            head = self.policy.peek_waiting()
            if head is None or self._leader_of(head) is None:
                return head
            self.policy.pop_waiting()
            self.deferred.append(head)
            self.num_deferrals += 1

    def pop_waiting(self) -> Request:
        """Take what peek_waiting returned out of the queue."""
        request = self._peeked_deferred
        if request is not None:
            self._peeked_deferred = None
            self.deferred.remove(request)
            return request
        return self.policy.pop_waiting()

    def remove_waiting(self, request: Request) -> bool:
        """Forget a waiting request (aborted), deferred or in the policy's queue; False if it was
        neither."""
        if request in self.deferred:
            self.deferred.remove(request)
            if self._peeked_deferred is request:
                self._peeked_deferred = None
            return True
        return self.policy.remove_waiting(request)

    def on_admitted(self, request: Request) -> None:
        """The request starts running: it leads its group while it computes the prompt's full
        blocks (a leader that runs already keeps the role)."""
        group = request.sibling_group
        if group is None or self._leader(group) is not None:
            return
        if request.num_computed_tokens < self._shared_tokens(request):
            self._leaders[group] = request

    def _leader_of(self, request: Request) -> Request | None:
        """The running sibling whose prompt blocks the request should wait for, or None."""
        group = request.sibling_group
        if group is None or request.sampling_params.prompt_logprobs is not None:
            return None
        leader = self._leader(group)
        return None if leader is request else leader

    def _leader(self, group: str) -> Request | None:
        """The group's leader while it runs with prompt blocks still to compute, else None (it
        computed them, or was preempted, aborted or finished: then it is forgotten)."""
        leader = self._leaders.get(group)
        if leader is not None and (
            leader.status != RequestStatus.RUNNING
            or leader.num_computed_tokens >= self._shared_tokens(leader)
        ):
            del self._leaders[group]
            return None
        return leader

    def _prune(self) -> None:
        """Forget leaders that lead no more (no sibling may come to ask)."""
        for group in list(self._leaders):
            self._leader(group)

    def _shared_tokens(self, request: Request) -> int:
        """The prompt tokens in full blocks that a sibling can take as prefix hits (never the
        prompt's last token, which a fresh sibling must compute for its logits)."""
        return (request.num_prompt_tokens - 1) // self.block_size * self.block_size
