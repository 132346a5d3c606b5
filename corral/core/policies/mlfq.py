"""Skip-join multi-level feedback queue with token-level preemption, after FastServe (Wu et al.,
"Fast Distributed Inference Serving for Large Language Models", 2023).

Level i has a quantum of base_quantum * quantum_ratio**i generated tokens (the last level has
none). A new request skips the levels whose quantum is shorter than its prefill (the prompt
counted as prompt_tokens / prefill_tokens_per_token decode-token equivalents) and joins the first
level that can hold it. Each generated token counts against the quantum of the request's level;
a request that uses up its quantum is demoted one level. Every step, requests of higher levels
get the budget first, and a waiting request of a higher level preempts running work of a lower
one (token-level preemption). A request that has waited promote_after_s at a lower level is
promoted to the top level (FastServe's starvation guard).

FastServe swaps a victim's KV to host memory; preemption here may be by recompute, so two guards
keep it from thrashing: a running request is preempted only after it has generated
min_tokens_before_preempt tokens since its admission (default: the top quantum), and a request
promoted for starvation is not preempted again.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence

from corral.core.policies.base import SCHEDULING_POLICIES, SchedulingPolicy
from corral.request import Request


class _State:
    """Per-request MLFQ state: level, tokens generated at that level, when it was queued."""

    __slots__ = ("level", "num_served", "queued_at", "num_since_admitted", "is_protected")

    def __init__(self, level: int, queued_at: float) -> None:
        self.level = level
        self.num_served = 0
        self.queued_at = queued_at
        self.num_since_admitted = 0
        self.is_protected = False


@SCHEDULING_POLICIES.register("mlfq")
class MLFQPolicy(SchedulingPolicy):
    """Options: num_levels (4), base_quantum (16 tokens), quantum_ratio (2),
    prefill_tokens_per_token (32: prompt tokens that cost as much as one generated token),
    promote_after_s (30; none disables promotion), preempt (true), min_tokens_before_preempt
    (none: base_quantum)."""

    def __init__(
        self,
        num_levels: int = 4,
        base_quantum: int = 16,
        quantum_ratio: float = 2.0,
        prefill_tokens_per_token: float = 32.0,
        promote_after_s: float | None = 30.0,
        preempt: bool = True,
        min_tokens_before_preempt: int | None = None,
    ) -> None:
        super().__init__()
        if num_levels < 1 or base_quantum < 1 or quantum_ratio < 1 or prefill_tokens_per_token <= 0:
            raise ValueError(
                f"mlfq needs num_levels >= 1 ({num_levels}), base_quantum >= 1 ({base_quantum}), "
                f"quantum_ratio >= 1 ({quantum_ratio}), prefill_tokens_per_token > 0 "
                f"({prefill_tokens_per_token})"
            )
        if promote_after_s is not None and not promote_after_s > 0:
            raise ValueError(f"promote_after_s must be > 0 (or none), got {promote_after_s}")
        self.num_levels = int(num_levels)
        # quanta[i]: generated tokens allowed at level i; the last level never demotes.
        self.quanta = [
            float(math.floor(base_quantum * quantum_ratio**i)) for i in range(self.num_levels)
        ]
        self.quanta[-1] = math.inf
        self.prefill_tokens_per_token = float(prefill_tokens_per_token)
        self.promote_after_s = math.inf if promote_after_s is None else float(promote_after_s)
        self.preempt = bool(preempt)
        self.min_tokens_before_preempt = (
            int(base_quantum)
            if min_tokens_before_preempt is None
            else int(min_tokens_before_preempt)
        )
        # levels[i]: waiting requests of level i in the order they were queued (oldest first).
        self._levels: list[OrderedDict[str, Request]] = [
            OrderedDict() for _ in range(self.num_levels)
        ]
        self._states: dict[str, _State] = {}
        self._num_waiting = 0
        self.num_demotions = 0
        self.num_promotions = 0

    # ----- levels ---------------------------------------------------------------------------

    def join_level(self, request: Request) -> int:
        """Skip-join: the first level whose quantum covers the request's prefill cost."""
        cost = request.num_prompt_tokens / self.prefill_tokens_per_token
        for level, quantum in enumerate(self.quanta):
            if cost <= quantum:
                return level
        return self.num_levels - 1

    def level_of(self, request: Request) -> int:
        """The request's current level (0 is the highest priority)."""
        return self._states[request.request_id].level

    def _rank(self, request: Request) -> tuple[int, float]:
        state = self._states.get(request.request_id)
        return (state.level if state else 0, request.arrival_time)

    # ----- waiting queue --------------------------------------------------------------------

    def add_waiting(self, request: Request) -> None:
        state = _State(self.join_level(request), self.now())
        self._states[request.request_id] = state
        self._enqueue(request, state)

    def requeue_preempted(self, request: Request) -> None:
        state = self._states[request.request_id]
        state.queued_at = self.now()
        self._enqueue(request, state)

    def _enqueue(self, request: Request, state: _State) -> None:
        self._levels[state.level][request.request_id] = request
        self._num_waiting += 1

    def _promote_starving(self) -> None:
        """Move requests that waited promote_after_s at a lower level to level 0. Each level is
        ordered by queueing time, so only its head needs checking (O(1) per promotion)."""
        if self.promote_after_s == math.inf:
            return
        now = self.now()
        for level in range(1, self.num_levels):
            queue = self._levels[level]
            while queue:
                request = next(iter(queue.values()))
                state = self._states[request.request_id]
                if now - state.queued_at < self.promote_after_s:
                    break
                del queue[request.request_id]
                state.level, state.num_served, state.queued_at = 0, 0, now
                state.is_protected = True
                self._levels[0][request.request_id] = request
                self.num_promotions += 1

    def peek_waiting(self) -> Request | None:
        self._promote_starving()
        for queue in self._levels:
            if queue:
                return next(iter(queue.values()))
        return None

    def pop_waiting(self) -> Request:
        for queue in self._levels:
            if queue:
                self._num_waiting -= 1
                request = queue.popitem(last=False)[1]
                self._states[request.request_id].num_since_admitted = 0
                return request
        raise IndexError("no request is waiting")

    def remove_waiting(self, request: Request) -> bool:
        state = self._states.get(request.request_id)
        if state is None or self._levels[state.level].pop(request.request_id, None) is None:
            return False
        self._num_waiting -= 1
        return True

    def num_waiting(self) -> int:
        return self._num_waiting

    def waiting_in_order(self, max_num: int) -> list[Request] | None:
        self._promote_starving()
        ordered = itertools.chain.from_iterable(queue.values() for queue in self._levels)
        return list(itertools.islice(ordered, max_num))

    # ----- running set ----------------------------------------------------------------------

    def order_running(self, running: list[Request], now: float) -> Sequence[Request]:
        return sorted(running, key=self._rank)

    def _is_preemptible(self, request: Request) -> bool:
        state = self._states.get(request.request_id)
        return state is None or (
            not state.is_protected and state.num_since_admitted >= self.min_tokens_before_preempt
        )

    def select_victim(self, running: list[Request]) -> Request:
        unprotected = [r for r in running if not self._states[r.request_id].is_protected]
        return max(unprotected or running, key=self._rank)

    def victims_for(self, candidate: Request, running: list[Request]) -> list[Request]:
        if not self.preempt:
            return []
        eligible = [r for r in running if self._is_preemptible(r)]
        if not eligible:
            return []
        victim = max(eligible, key=self._rank)
        return [victim] if self._rank(victim)[0] > self.level_of(candidate) else []

    def on_step(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Request]) -> None:
        """Charge each token sampled this step to its request's quantum; demote on exhaustion."""
        for request_id, num_tokens in num_scheduled_tokens.items():
            request = requests[request_id]
            if request.num_computed_tokens + num_tokens != request.num_tokens:
                continue  # a prefill chunk that samples nothing
            state = self._states[request_id]
            state.num_served += 1
            state.num_since_admitted += 1
            if state.num_served >= self.quanta[state.level]:
                state.level += 1
                state.num_served = 0
                self.num_demotions += 1

    def on_request_finished(self, request: Request) -> None:
        self._states.pop(request.request_id, None)
