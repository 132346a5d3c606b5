"""A step's sampling, and speculative verification, under each request's output constraint
(grammar, reasoning budget): the executor's last stage. Constraints advance on the tokens that
stand; a request whose grammar allows no token fails with a reason instead of sampling."""

from __future__ import annotations

from typing import NamedTuple

import torch

from corral.core.messages import TokenLogprobs
from corral.model.sampler import Sampler, SamplingRow
from corral.model.step_inputs import RequestState
from corral.spec.verify import VerifyGroup, verify
from corral.structured.masking import NO_TOKEN_ALLOWED, sample_mask, verify_mask

_REFUSED = "the output's grammar refused token {token_id} (constraint out of step)"


class StepSamples(NamedTuple):
    token_ids: dict[str, list[int]]
    logprobs: dict[str, list[TokenLogprobs]]
    failed: dict[str, str]


def sampling_row(state: RequestState) -> SamplingRow:
    return SamplingRow(
        state.params,
        state.token_ids[: state.num_prompt_tokens],
        state.output_token_ids,
        state.stop_token_ids,
    )


def sample(sampler: Sampler, logits: torch.Tensor, states: list[RequestState]) -> StepSamples:
    """One token per request, from one logits row each."""
    result = StepSamples({}, {}, {})
    constraints = [state.constraint for state in states]
    mask = sample_mask(constraints, logits.shape[-1])
    empty = mask.take_empty_rows(logits.shape[-1]) if mask is not None else set()
    output = sampler(logits, [sampling_row(state) for state in states], mask)
    for row, state in enumerate(states):
        token_id = output.token_ids[row]
        if row in empty:
            result.failed[state.request_id] = NO_TOKEN_ALLOWED
            continue
        constraint = state.constraint
        if constraint is not None and not constraint.accept(token_id):
            result.failed[state.request_id] = _REFUSED.format(token_id=token_id)
            continue
        state.token_ids.append(token_id)
        result.token_ids[state.request_id] = [token_id]
        if output.logprobs[row] is not None:
            result.logprobs[state.request_id] = [output.logprobs[row]]
    return result


def verify_drafts(
    sampler: Sampler,
    logits: torch.Tensor,
    states: list[RequestState],
    drafts: dict[str, list[int]],
) -> StepSamples:
    """Accept or reject each request's drafts (k + 1 logits rows each; see spec/verify.py)."""
    result = StepSamples({}, {}, {})
    groups = []
    for state in states:
        draft_ids = drafts.get(state.request_id, [])
        draft_probs = state.draft_probs
        if draft_probs is not None:
            draft_probs = draft_probs[: len(draft_ids)]
        groups.append(VerifyGroup(sampling_row(state), draft_ids, draft_probs))
    pairs = [(state.constraint, group.draft_token_ids) for state, group in zip(states, groups)]
    mask, num_walked = verify_mask(pairs, logits.shape[-1])
    empty = mask.take_empty_rows(logits.shape[-1]) if mask is not None else set()
    first_row = 0
    verified = verify(sampler, logits, groups, mask)
    for state, group, outcome, walked in zip(states, groups, verified, num_walked):
        start, first_row = first_row, first_row + len(group.draft_token_ids) + 1
        constraint = state.constraint
        if constraint is not None:
            constraint.rollback(walked)
        if start in empty:
            result.failed[state.request_id] = NO_TOKEN_ALLOWED
            continue
        if constraint is not None:
            refused = next((t for t in outcome.token_ids if not constraint.accept(t)), None)
            if refused is not None:
                result.failed[state.request_id] = _REFUSED.format(token_id=refused)
                continue
        state.token_ids.extend(outcome.token_ids)
        result.token_ids[state.request_id] = outcome.token_ids
        if outcome.logprobs is not None:
            result.logprobs[state.request_id] = outcome.logprobs
    return result
