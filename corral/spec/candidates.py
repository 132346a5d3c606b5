"""What the speculative controller plans over (torch-free): a candidate request, the plan it
returns, and a candidate's catch-up (corral/spec/controller.py)."""

from __future__ import annotations

from typing import NamedTuple

# A proposer's catch-up on tokens it has not seen (a draft model's prefill of a request's prompt)
# is paid once and serves the request's later proposals: it is spread over the steps the request
# may still run, at most CATCHUP_HORIZON_STEPS (assuming about two tokens a step). The tokens a
# proposer syncs every step anyway are not catch-up.
CATCHUP_HORIZON_STEPS = 32
NUM_TOKENS_SYNCED_PER_STEP = 2


class Candidate(NamedTuple):
    """A request that samples this step: the drafts it holds, the most it may take, how many of
    its tokens the proposer has not seen (it catches up on them before proposing), and how many
    output tokens it may still produce."""

    num_held: int
    max_num_tokens: int
    num_tokens_behind: int = 0
    num_remaining_tokens: int = 1 << 30


class SpecPlan(NamedTuple):
    """Drafts to verify now and drafts to propose for the next step, per request id."""

    verify: dict[str, int]
    propose: dict[str, int]


def catchup_tokens(candidate: Candidate) -> int:
    """Tokens the proposer must catch up on before it proposes for the candidate."""
    return max(candidate.num_tokens_behind - NUM_TOKENS_SYNCED_PER_STEP, 0)


def horizon_steps(candidate: Candidate) -> float:
    """Steps the candidate's catch-up is spread over."""
    return max(1.0, min(candidate.num_remaining_tokens / 2, CATCHUP_HORIZON_STEPS))


def plan_at_depths(
    proposing: dict[str, int], candidates: dict[str, Candidate], max_depth: int, budget: int
) -> SpecPlan:
    """The fixed rule (every candidate at max_depth), and a plan held from an earlier step
    (SpecController.plan, PLAN_HOLD_STEPS): each request of proposing verifies what it holds
    (what it was granted to propose, which the rule priced to verify) and proposes as deep
    again, within its candidate's limits and the budget."""
    verify: dict[str, int] = {}
    propose: dict[str, int] = {}
    for request_id, depth in proposing.items():
        num_held, max_num_tokens, *_ = candidates[request_id]
        k = min(depth, max_num_tokens, max_depth)
        if k <= 0:
            continue
        propose[request_id] = k
        use = min(num_held, max_num_tokens, max_depth, budget)
        if use > 0:
            verify[request_id] = use
            budget -= use
    return SpecPlan(verify, propose)


def probe_order(
    candidates: dict[str, Candidate], max_depth: int, max_num_requests: int
) -> dict[str, tuple[int, int]]:
    """The cheapest requests to probe, in order (those the proposer is least behind on), at most
    max_num_requests: each one's (most drafts it may take, catch-up tokens), as choose_probes
    (corral/spec/grant.py) takes them."""
    eligible = sorted(
        (rid for rid, c in candidates.items() if min(c.max_num_tokens, max_depth) > 0),
        key=lambda rid: candidates[rid].num_tokens_behind,
    )
    return {
        rid: (candidates[rid].max_num_tokens, catchup_tokens(candidates[rid]))
        for rid in eligible[:max_num_requests]
    }


def proposing_ids(candidates: dict[str, Candidate]) -> list[str] | None:
    """The candidates that may propose drafts, or None when any holds drafts (then a plan
    verifies something, whatever proposals pay)."""
    if any(candidate.num_held > 0 for candidate in candidates.values()):
        return None
    return [rid for rid, candidate in candidates.items() if candidate.max_num_tokens > 0]


def start_plan(
    candidates: dict[str, Candidate],
    depth: int,
    max_depth: int,
    budget: int,
    max_num_requests: int,
) -> SpecPlan:
    """A few requests (those holding drafts first, at most max_num_requests) verify what they
    hold, within budget, and propose depth drafts: the adaptive rule's start, which measures a
    proposer's cost and acceptance before the rule grants anything."""
    eligible = [rid for rid, c in candidates.items() if c.max_num_tokens > 0]
    eligible.sort(key=lambda rid: candidates[rid].num_held == 0)  # holders first
    chosen = eligible[:max_num_requests]
    verify: dict[str, int] = {}
    for rid in chosen:
        num_held, max_num_tokens, *_ = candidates[rid]
        k = min(num_held, max_num_tokens, max_depth, budget)
        if k > 0:
            verify[rid] = k
            budget -= k
    return SpecPlan(verify, {rid: min(candidates[rid].max_num_tokens, depth) for rid in chosen})
