"""Verification of draft tokens (torch, data plane): one target forward pass has scored a
request's last real token and its k drafts (k + 1 rows); this decides which drafts stand and
adds the target's own next token.

Greedy: accept the drafts while each equals the target's argmax, then add the argmax at the
first disagreement (or after the last draft): exactly the tokens greedy decoding would produce.

Sampling without a seed: rejection sampling (Leviathan et al. 2023; Chen et al. 2023). Draft x,
drawn from q, stands with probability min(1, p(x) / q(x)); at the first rejection the token is
drawn from max(p - q, 0), renormalised; if all stand, one more is drawn from p. The output is
distributed exactly as sampling from p token by token. A proposer that picks its drafts
deterministically (n-gram, suffix) is a point mass q = 1{x}.

Sampling with a seed: coupled verification. The ordinary sampler draws output position m by the
exponential race with noise seeded by (seed, m); here the target draws every row the same way
and a draft stands when it equals the target's draw. The text is then exactly the text the
request gets without speculation, so it cannot depend on the batch, on K or on the proposer
(a draft model drawing with the same noise agrees with the target as often as their
distributions allow under that coupling). For a point-mass draft the acceptance chance, p(x), is
the same as rejection sampling's.

Penalties, logit bias and min_tokens are applied at each row as if the drafts before it had
been accepted; p is the distribution the ordinary sampler would draw from at that position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from corral.core.messages import TokenLogprobs
from corral.model.sampler import (
    Sampler,
    SamplingRow,
    argmax_rows,
    gather_logprobs,
    plain_greedy,
    samples_greedily,
    sampling_probs,
)

if TYPE_CHECKING:
    from corral.structured.masking import TokenMask


@dataclass(slots=True)
class VerifyGroup:
    """One request's rows: row 0 follows its last real token, row i follows draft i."""

    row: SamplingRow  # at row 0 (output_token_ids: the verified output so far)
    draft_token_ids: list[int]
    draft_probs: torch.Tensor | None = None  # [k, vocab]: the q each draft was drawn from


@dataclass(slots=True)
class VerifyResult:
    token_ids: list[int]  # accepted drafts, then the target's token (1 to k + 1)
    logprobs: list[TokenLogprobs] | None


def verify(
    sampler: Sampler,
    logits: torch.Tensor,
    groups: list[VerifyGroup],
    mask: TokenMask | None = None,
) -> list[VerifyResult]:
    """logits: [sum(k_g + 1), vocab] float32, the groups' rows back to back (modified in place).
    A group without drafts is ordinary sampling of one token. mask: grammar masks per row (see
    corral/structured/masking.py)."""
    if mask is None and all(plain_greedy(group.row) for group in groups):
        # Nothing to process and no logprobs: one argmax over every row.
        argmax_ids = argmax_rows(logits)
        results = []
        start = 0
        for group in groups:
            drafts = group.draft_token_ids
            results.append(VerifyResult(_accept_greedy(drafts, argmax_ids, start), None))
            start += len(drafts) + 1
        return results
    rows: list[SamplingRow] = []
    starts: list[int] = []
    for group in groups:
        starts.append(len(rows))
        base = group.row
        for i in range(len(group.draft_token_ids) + 1):
            output = base.output_token_ids
            if i:
                output = output + group.draft_token_ids[:i]
            rows.append(
                SamplingRow(base.params, base.prompt_token_ids, output, base.stop_token_ids)
            )
    want_logprobs = any(group.row.params.logprobs is not None for group in groups)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    sampler.process(logits, rows, mask)
    greedy_rows = [
        r
        for g, start in zip(groups, starts)
        if samples_greedily(g.row.params)
        for r in range(start, start + len(g.draft_token_ids) + 1)
    ]
    argmax: dict[int, int] = {}
    if greedy_rows:
        picked = argmax_rows(logits[greedy_rows])
        argmax = dict(zip(greedy_rows, picked))
    random_rows = [r for r in range(len(rows)) if r not in argmax]
    probs_of: dict[int, torch.Tensor] = {}
    if random_rows:
        probs = sampling_probs(logits[random_rows], [rows[r].params for r in random_rows])
        probs_of = {r: probs[index] for index, r in enumerate(random_rows)}
    results = []
    for group, start in zip(groups, starts):
        if samples_greedily(group.row.params):
            token_ids = _accept_greedy(group.draft_token_ids, argmax, start)
        else:
            token_ids = _accept_sampled(sampler, group, rows, probs_of, start)
        logprobs = None
        if raw_logprobs is not None and group.row.params.logprobs is not None:
            num_top = group.row.params.logprobs or 0
            logprobs = [
                gather_logprobs(raw_logprobs[start + i], token_id, num_top)
                for i, token_id in enumerate(token_ids)
            ]
        results.append(VerifyResult(token_ids, logprobs))
    return results


def _accept_greedy(drafts: list[int], argmax: list[int] | dict[int, int], start: int) -> list[int]:
    """The drafts that equal the target's argmax at their rows, then the argmax at the first
    that does not (or after the last). argmax: by row index."""
    i = 0  # the first rejected draft, or len(drafts)
    while i < len(drafts) and argmax[start + i] == drafts[i]:
        i += 1
    return [argmax[start + j] for j in range(i + 1)]


def _accept_sampled(
    sampler: Sampler,
    group: VerifyGroup,
    rows: list[SamplingRow],
    probs_of: dict[int, torch.Tensor],
    start: int,
) -> list[int]:
    seed = group.row.params.seed
    if seed is not None:
        return _accept_coupled(sampler, group, rows, probs_of, start, seed)
    token_ids = []
    for i, draft in enumerate(group.draft_token_ids):
        p = probs_of[start + i]
        position = len(rows[start + i].output_token_ids)
        uniform = torch.rand((), generator=sampler.generator, device=p.device).item()
        p_draft = float(p[draft])
        q_draft = 1.0 if group.draft_probs is None else float(group.draft_probs[i, draft])
        if q_draft > 0 and uniform * q_draft < p_draft:
            token_ids.append(draft)
            continue
        if group.draft_probs is None:
            residual = p.clone()
            residual[draft] = 0.0
        else:
            residual = torch.clamp(p - group.draft_probs[i].to(p.dtype), min=0.0)
        if float(residual.sum()) <= 0.0:
            residual = p
        token_ids.append(sampler.race_sample(residual, None, position))
        return token_ids
    last = start + len(group.draft_token_ids)
    token_ids.append(sampler.race_sample(probs_of[last], None, len(rows[last].output_token_ids)))
    return token_ids


def _accept_coupled(
    sampler: Sampler,
    group: VerifyGroup,
    rows: list[SamplingRow],
    probs_of: dict[int, torch.Tensor],
    start: int,
    seed: int,
) -> list[int]:
    token_ids = []
    for i in range(len(group.draft_token_ids) + 1):
        row = start + i
        token_id = sampler.race_sample(probs_of[row], seed, len(rows[row].output_token_ids))
        token_ids.append(token_id)
        if i == len(group.draft_token_ids) or token_id != group.draft_token_ids[i]:
            break
    return token_ids
