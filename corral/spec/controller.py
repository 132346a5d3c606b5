"""How many tokens each request speculates this step (torch-free; scheduler and simulator).

Rule "fixed": always K. Rule "adaptive" (the default) keeps speculation from ever costing
throughput: with a request's measured acceptance alpha (the chance that a draft token is accepted
given that the ones before it were), its j-th draft token yields alpha^j tokens in expectation and
costs one more token of verification plus its proposal. Draft tokens are granted, best expected
yield first, while each one's yield per second beats the step's tokens per second so far; a batch
where verification is dear (large, compute-bound) gets none, a lone request with a good proposer
gets K.
"""

from __future__ import annotations

import heapq
import statistics

from corral.spec.stats import SpecDecodeStats
from corral.spec.step_cost import StepCostEstimate

# Acceptance assumed before a proposer has been measured, and how many trials it weighs as
# a prior for each request's own estimate.
PRIOR_ACCEPTANCE = 0.6
PRIOR_WEIGHT_TRIALS = 8.0
# A draft token must beat the running tokens per second by this factor (hysteresis against noise).
MIN_GAIN_FACTOR = 1.02
# After this many steps without speculation, a few requests speculate one token for a step, so
# that acceptance and proposal cost stay measured (costs at most 1/PROBE_INTERVAL_STEPS of a
# step's few tokens).
PROBE_INTERVAL_STEPS = 64
# Proposal cost per token: the median of the first samples, then an EWMA of samples clipped to a
# multiple of the estimate.
PROPOSE_COST_WARMUP_SAMPLES = 8
PROPOSE_COST_EWMA = 0.1
PROPOSE_COST_CLIP = 3.0
NUM_PROBE_REQUESTS = 4


class _Acceptance:
    __slots__ = ("successes", "trials")

    def __init__(self) -> None:
        self.successes = 0.0
        self.trials = 0.0


class SpecController:
    """Chooses K per request (plan), learns from verification rounds (record) and step times
    (observe_step)."""

    def __init__(self, max_num_tokens: int, rule: str = "adaptive") -> None:
        if rule not in ("adaptive", "fixed"):
            raise ValueError(f"num_tokens_rule must be 'adaptive' or 'fixed', got {rule!r}")
        self.max_num_tokens = max_num_tokens
        self.rule = rule
        self.step_cost = StepCostEstimate()
        self.stats = SpecDecodeStats()
        self._global = _Acceptance()
        self._per_request: dict[str, _Acceptance] = {}
        # Proposal cost per proposed token, EWMA (seconds).
        self.propose_s_per_token = 0.0
        self.num_steps_without_drafts = 0
        self._propose_warmup: list[float] = []

    # ----- learning -----------------------------------------------------------------------

    def record(self, request_id: str, num_draft_tokens: int, num_accepted: int) -> None:
        """A verification round of request_id: num_draft_tokens scored, num_accepted accepted."""
        self.stats.record(num_draft_tokens, num_accepted)
        # Trials: every accepted token, and the rejected one after them if there was one.
        trials = min(num_accepted + 1, num_draft_tokens)
        for acceptance in (self._global, self._per_request.setdefault(request_id, _Acceptance())):
            acceptance.successes += num_accepted
            acceptance.trials += trials

    def observe_step(
        self, num_tokens: int, step_time_s: float, propose_time_s: float, num_proposed: int
    ) -> None:
        """One step's cost: num_tokens scheduled; step_time_s in all, of which propose_time_s
        went to proposing num_proposed tokens for the next step."""
        self.step_cost.observe(num_tokens, step_time_s - propose_time_s)
        if num_proposed <= 0:
            return
        sample = propose_time_s / num_proposed
        warmup = self._propose_warmup
        if len(warmup) < PROPOSE_COST_WARMUP_SAMPLES:
            warmup.append(sample)
            self.propose_s_per_token = statistics.median(warmup)
            return
        # Clipped: one-off costs (a draft model prefilling a new prompt) are not per token.
        sample = min(sample, PROPOSE_COST_CLIP * self.propose_s_per_token)
        self.propose_s_per_token += PROPOSE_COST_EWMA * (sample - self.propose_s_per_token)

    def forget(self, request_id: str) -> None:
        self._per_request.pop(request_id, None)

    def acceptance(self, request_id: str) -> float:
        """The request's estimated per-token acceptance, shrunk toward the proposer's."""
        g = self._global
        prior = (g.successes + PRIOR_ACCEPTANCE * PRIOR_WEIGHT_TRIALS) / (
            g.trials + PRIOR_WEIGHT_TRIALS
        )
        own = self._per_request.get(request_id)
        if own is None:
            return prior
        return (own.successes + prior * PRIOR_WEIGHT_TRIALS) / (own.trials + PRIOR_WEIGHT_TRIALS)

    # ----- deciding -----------------------------------------------------------------------

    def plan(
        self,
        candidates: dict[str, int],
        num_scheduled_tokens: int,
        num_sampled: int,
        budget: int,
    ) -> dict[str, int]:
        """K per candidate request id (absent: 0). candidates maps each request that samples
        this step to the most draft tokens it may take; the step computes num_scheduled_tokens
        without speculation and samples num_sampled tokens; budget caps the draft tokens."""
        if self.rule == "fixed":
            plan: dict[str, int] = {}
            for request_id, max_k in candidates.items():
                k = min(max_k, self.max_num_tokens, budget)
                if k > 0:
                    plan[request_id] = k
                    budget -= k
        else:
            plan = self._plan_adaptive(candidates, num_scheduled_tokens, num_sampled, budget)
            if plan:
                self.num_steps_without_drafts = 0
            else:
                self.num_steps_without_drafts += 1
                if self.num_steps_without_drafts >= PROBE_INTERVAL_STEPS:
                    self.num_steps_without_drafts = 0
                    probes = [rid for rid, max_k in candidates.items() if max_k > 0]
                    plan = dict.fromkeys(probes[: min(NUM_PROBE_REQUESTS, budget)], 1)
        self.stats.num_planned_requests += len(plan)
        self.stats.num_planned_tokens += sum(plan.values())
        return plan

    def _plan_adaptive(
        self, candidates: dict[str, int], num_scheduled_tokens: int, num_sampled: int, budget: int
    ) -> dict[str, int]:
        if not self.step_cost.is_ready:
            # Nothing measured yet: one draft token each, to start learning.
            return {rid: 1 for rid, max_k in list(candidates.items())[:budget] if max_k > 0}
        fixed_s, per_token_s = self.step_cost.coefficients()
        tokens = float(max(num_sampled, 1))
        time_s = fixed_s + per_token_s * num_scheduled_tokens
        cost_s = per_token_s + self.propose_s_per_token
        if time_s <= 0:
            return {}
        # Max-heap of (-yield, request id, j, alpha): the next draft token each request could take.
        heap: list[tuple[float, str, int, float]] = []
        for request_id, max_k in candidates.items():
            if max_k > 0:
                alpha = self.acceptance(request_id)
                heap.append((-alpha, request_id, 1, alpha))
        heapq.heapify(heap)
        plan: dict[str, int] = {}
        while heap and budget > 0:
            negative_yield, request_id, j, alpha = heapq.heappop(heap)
            gain = -negative_yield
            if gain * time_s <= MIN_GAIN_FACTOR * tokens * cost_s:
                break  # sorted by yield: no later token can pay either
            tokens += gain
            time_s += cost_s
            plan[request_id] = j
            budget -= 1
            if j < min(candidates[request_id], self.max_num_tokens):
                heapq.heappush(heap, (-gain * alpha, request_id, j + 1, alpha))
        return plan
