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
