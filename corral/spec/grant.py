"""Granting draft depths (torch-free): how many drafts each request gets, depth by depth, so
that tokens per second rise (corral/spec/controller.py's rule, for verification and proposals
alike)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

# A draft token must beat the running tokens per second by this factor (hysteresis against noise).
MIN_GAIN_FACTOR = 1.02


class GrantCosts(NamedTuple):
    """Seconds a grant costs: per draft (token_s), per depth reached (pass_s, one draft pass
    for the whole batch), once when any request is granted (call_s), and per request at depth 1
    (start_s: its share of a proposer's catch-up)."""

    token_s: float
    pass_s: float = 0.0
    call_s: float = 0.0
    start_s: Mapping[str, float] = MappingProxyType({})


def grant_depths(
    limits: dict[str, int],
    depth_yields: dict[str, list[float]],
    tokens: float,
    time_s: float,
    costs: GrantCosts,
    budget: int | None,
    max_depth: int,
) -> tuple[dict[str, int], float, float]:
    """Depth by depth: from depth j, the requests granted j - 1 (all at j = 1) are ranked by the
    yield of their drafts j..d per second of their cost (depth_yields[rid][d - 1]: the expected
    tokens of the request's d-th draft); the number granted and the depth d reached are the pair
    that maximises tokens per second, d = j only unless the depths share a cost (a pass, the
    call, or at j = 1 a request's start). Looking past j matters where that cost is
    large against a draft's: one draft may not pay for the call, or for a verification's
    bookkeeping, while four do.
    Stops at the first depth from which no grant beats the current rate by MIN_GAIN_FACTOR.
    Returns (grants, tokens, time_s)."""
    granted: dict[str, int] = {}
    if time_s <= 0:
        return granted, tokens, time_s
    level = list(depth_yields)
    remaining = budget
    starts_cost = any(start_s > 0 for start_s in costs.start_s.values())
    j = 1
    while j <= max_depth:
        level = [rid for rid in level if limits[rid] >= j]
        if not level or remaining == 0:
            break
        choice = None  # (count, depth, ranked level)
        best_tokens, best_time = tokens, time_s
        gains = dict.fromkeys(level, 0.0)
        for depth in range(j, max_depth + 1):
            reach = [rid for rid in level if limits[rid] >= depth]
            if not reach:
                break
            num_depths = depth - j + 1
            for rid in reach:
                gains[rid] += depth_yields[rid][depth - 1]
            request_costs = {
                rid: num_depths * costs.token_s + (costs.start_s.get(rid, 0.0) if j == 1 else 0.0)
                for rid in reach
            }
            ranked = sorted(
                reach,
                key=lambda rid: (
                    -gains[rid] / request_costs[rid] if request_costs[rid] > 0 else -1e30
                ),
            )
            if remaining is not None:
                ranked = ranked[: remaining // num_depths]
            fixed_cost_s = num_depths * costs.pass_s + (costs.call_s if j == 1 else 0.0)
            gain_sum = cost_sum = 0.0
            for count, rid in enumerate(ranked, 1):
                gain_sum += gains[rid]
                cost_sum += request_costs[rid]
                new_tokens = tokens + gain_sum
                new_time = time_s + fixed_cost_s + cost_sum
                if new_tokens * best_time > best_tokens * new_time:
                    best_tokens, best_time = new_tokens, new_time
                    choice = (count, depth, ranked)
            if costs.pass_s <= 0 and costs.call_s <= 0 and (j > 1 or not starts_cost):
                break  # depth by depth (without costs shared by depths as good as looking ahead)
        # The drafts must yield, per second they cost, MIN_GAIN_FACTOR times the step's rate so
        # far (hysteresis against noise in the estimates).
        if choice is None or (best_tokens - tokens) * time_s <= (
            MIN_GAIN_FACTOR * tokens * (best_time - time_s)
        ):
            break
        count, depth, ranked = choice
        level = ranked[:count]
        for rid in level:
            granted[rid] = depth
        tokens, time_s = best_tokens, best_time
        if remaining is not None:
            remaining -= count * (depth - j + 1)
        j = depth + 1
    return granted, tokens, time_s


def no_grant_can_pay(
    profile: list[float],
    scale: float,
    num_eligible: int,
    num_candidates: int,
    step_time_s: float,
    costs: GrantCosts,
    request_s: float = 0.0,
) -> bool:
    """True when no grant of proposals can pay (SpecController._nothing_pays): at every depth d
    of the profile (the chance that a round's first d drafts stand, times scale, the best
    request's acceptance over the pooled one), n requests of the eligible proposing d drafts
    each, without catch-up, fail grant_depths' test against the decode step's rate
    (num_candidates tokens in step_time_s) for the call, d passes, n * d drafts and n requests'
    start (request_s each, the least any start costs). The margin is linear in n, so n = 1 and
    n = all bound it."""
    total_yield = 0.0
    last = 1.0
    for depth in range(1, len(profile) + 1):
        last = min(1.0, scale * profile[depth - 1], last)
        total_yield += last
        for n in {1, num_eligible}:
            cost_s = costs.call_s + depth * costs.pass_s + n * (depth * costs.token_s + request_s)
            if n * total_yield * step_time_s > MIN_GAIN_FACTOR * num_candidates * cost_s:
                return False
    return True


def choose_probes(
    requests: dict[str, tuple[int, int]],
    max_depth: int,
    budget_s: float,
    costs: GrantCosts,
    catchup_s: float,
) -> dict[str, int]:
    """Probes, in the order given (the cheapest first): as deep as the budget holds (max_depth
    where it can: the acceptance of deep drafts and the cost of more passes are measured only
    where drafts that deep are tried), as many requests as it holds at that depth. requests:
    each one's (most drafts it may take, tokens the proposer must catch up on)."""
    for depth in range(max_depth, 0, -1):
        spent_s = costs.call_s + depth * costs.pass_s
        probes = {}
        for rid, (max_num_tokens, num_catchup) in requests.items():
            spent_s += min(max_num_tokens, depth) * costs.token_s + catchup_s * num_catchup
            if spent_s > budget_s:
                break
            probes[rid] = min(max_num_tokens, depth)
        if probes:
            return probes
    return {}
