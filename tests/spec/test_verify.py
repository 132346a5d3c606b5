"""Verification: greedy acceptance is exact; rejection sampling is lossless (chi-square test)."""

from __future__ import annotations

import pytest
import torch

import corral.spec.verify as verify_module
from corral.model.sampler import Sampler, SamplingRow
from corral.sampling_params import SamplingParams
from corral.spec.verify import VerifyGroup, verify

VOCAB = 8
# Critical value of chi-square with VOCAB - 1 = 7 degrees of freedom at significance 0.001.
CHI2_CRITICAL_7_DF = 24.32
NUM_SAMPLES = 12_000


def row(params: SamplingParams, output: list[int] | None = None) -> SamplingRow:
    return SamplingRow(params, [1, 2, 3], output or [], frozenset())


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def target_logits(num_rows: int) -> torch.Tensor:
    """Rows of fixed random logits (row i the same whatever num_rows; at most 8)."""
    generator = torch.Generator().manual_seed(7)
    return (torch.randn(8, VOCAB, generator=generator) * 1.5)[:num_rows].clone()


def first_token_counts(
    drafts: list[int], draft_probs: torch.Tensor | None, params: SamplingParams
) -> torch.Tensor:
    sampler = Sampler(0, torch.device("cpu"))
    logits = target_logits(len(drafts) + 1)
    counts = torch.zeros(VOCAB)
    per_call = 2000
    for _ in range(NUM_SAMPLES // per_call):
        groups = [VerifyGroup(row(params), drafts, draft_probs) for _ in range(per_call)]
        batch = logits.repeat(per_call, 1)
        for result in verify(sampler, batch, groups):
            assert 1 <= len(result.token_ids) <= len(drafts) + 1
            counts[result.token_ids[0]] += 1
    return counts


def sampled_drafts(q: torch.Tensor, k: int) -> list[int]:
    return [int(torch.multinomial(q[i], 1).item()) for i in range(k)]


PARAMS = SamplingParams(temperature=1.0, max_tokens=8)


@pytest.mark.parametrize("drafts", [[0], [int(target_logits(1)[0].argmax())], [3, 5, 1]])
def test_point_mass_drafts_are_lossless(drafts: list[int]) -> None:
    p = torch.softmax(target_logits(1)[0], dim=-1)
    counts = first_token_counts(drafts, None, PARAMS)
    assert chi_square(counts, p) < CHI2_CRITICAL_7_DF


def test_sampled_drafts_are_lossless() -> None:
    generator = torch.Generator().manual_seed(3)
    q = torch.softmax(torch.randn(2, VOCAB, generator=generator), dim=-1)
    p = torch.softmax(target_logits(1)[0], dim=-1)
    # Each trial needs its own draft drawn from q: verify in batches of groups with fresh drafts.
    sampler = Sampler(0, torch.device("cpu"))
    logits = target_logits(3)
    counts = torch.zeros(VOCAB)
    torch.manual_seed(11)
    per_call = 1000
    for _ in range(NUM_SAMPLES // per_call):
        groups = [VerifyGroup(row(PARAMS), sampled_drafts(q, 2), q) for _ in range(per_call)]
        for result in verify(sampler, logits.repeat(per_call, 1), groups):
            counts[result.token_ids[0]] += 1
    assert chi_square(counts, p) < CHI2_CRITICAL_7_DF


def test_the_test_catches_a_biased_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resampling from p instead of the residual max(p - q, 0) after a rejection over-weights
    the draft; the chi-square test above must see it."""
    original = torch.clamp

    def no_residual(tensor: torch.Tensor, min: float) -> torch.Tensor:  # noqa: A002
        return original(tensor, min=min) * 0 + 1  # uniform weights: a wrong correction

    monkeypatch.setattr(verify_module.torch, "clamp", no_residual)
    q = torch.full((1, VOCAB), 1.0 / VOCAB)
    p = torch.softmax(target_logits(1)[0], dim=-1)
    sampler = Sampler(0, torch.device("cpu"))
    counts = torch.zeros(VOCAB)
    torch.manual_seed(5)
    for _ in range(NUM_SAMPLES // 1000):
        groups = [VerifyGroup(row(PARAMS), sampled_drafts(q, 1), q) for _ in range(1000)]
        for result in verify(sampler, target_logits(2).repeat(1000, 1), groups):
            counts[result.token_ids[0]] += 1
    assert chi_square(counts, p) > CHI2_CRITICAL_7_DF


def test_bonus_token_follows_the_last_row() -> None:
    """When every draft stands, the extra token is drawn from the row after the last draft."""
    logits = target_logits(2)
    logits[0] = -30.0
    logits[0, 4] = 30.0  # row 0 certainly yields 4: the draft stands
    p_bonus = torch.softmax(logits[1], dim=-1)
    sampler = Sampler(0, torch.device("cpu"))
    counts = torch.zeros(VOCAB)
    for _ in range(NUM_SAMPLES // 2000):
        groups = [VerifyGroup(row(PARAMS), [4]) for _ in range(2000)]
        for result in verify(sampler, logits.repeat(2000, 1), groups):
            assert result.token_ids[0] == 4 and len(result.token_ids) == 2
            counts[result.token_ids[1]] += 1
    assert chi_square(counts, p_bonus) < CHI2_CRITICAL_7_DF


def test_greedy_accepts_the_matching_prefix_then_the_argmax() -> None:
    logits = target_logits(4)
    argmax = logits.argmax(dim=-1).tolist()
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    sampler = Sampler(0, torch.device("cpu"))
    wrong = (argmax[1] + 1) % VOCAB
    cases = [
        ([argmax[0], argmax[1], argmax[2]], argmax[:4]),
        ([argmax[0], wrong, argmax[2]], [argmax[0], argmax[1]]),
        ([(argmax[0] + 1) % VOCAB, argmax[1], argmax[2]], [argmax[0]]),
    ]
    for drafts, expected in cases:
        [result] = verify(sampler, logits.clone(), [VerifyGroup(row(greedy), drafts)])
        assert result.token_ids == expected


def test_penalties_see_the_drafts_before_each_row() -> None:
    """Row i is processed as if drafts 1..i had been accepted: a repetition penalty on a draft
    token changes the next row's argmax."""
    logits = torch.zeros(2, VOCAB)
    logits[0, 5] = 2.0
    logits[1, 5] = 2.0
    logits[1, 6] = 1.5
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, max_tokens=8)
    sampler = Sampler(0, torch.device("cpu"))
    [result] = verify(sampler, logits, [VerifyGroup(row(params), [5])])
    # Row 0: 5 wins (not yet seen). Row 1: 5 was seen (2.0 / 2 = 1.0 < 1.5): 6 wins.
    assert result.token_ids == [5, 6]


def test_seeded_verification_is_reproducible_whatever_the_batch() -> None:
    seeded = SamplingParams(temperature=1.0, seed=42, max_tokens=8)
    other = SamplingParams(temperature=1.0, max_tokens=8)
    logits = target_logits(3)
    alone = verify(
        Sampler(0, torch.device("cpu")), logits.clone(), [VerifyGroup(row(seeded), [1, 2])]
    )
    for neighbours in range(1, 4):
        groups = [VerifyGroup(row(other), [3, 3]) for _ in range(neighbours)]
        groups.insert(neighbours // 2, VerifyGroup(row(seeded), [1, 2]))
        batch = logits.repeat(neighbours + 1, 1)
        results = verify(Sampler(neighbours, torch.device("cpu")), batch, groups)
        assert results[neighbours // 2].token_ids == alone[0].token_ids


def test_seeded_verification_gives_the_ordinary_samplers_tokens() -> None:
    """Coupled verification: whatever the drafts, a seeded request's tokens are those the
    ordinary sampler draws at the same output positions."""
    seeded = SamplingParams(temperature=1.0, seed=9, max_tokens=8)
    logits = target_logits(4)
    sampler = Sampler(0, torch.device("cpu"))
    ordinary = [
        sampler(logits[i : i + 1].clone(), [row(seeded, [0] * i)]).token_ids[0] for i in range(4)
    ]
    for drafts in ([], [ordinary[0]], ordinary[:3], [ordinary[0], (ordinary[1] + 1) % VOCAB]):
        rows = len(drafts) + 1
        [result] = verify(sampler, logits[:rows].clone(), [VerifyGroup(row(seeded), drafts)])
        assert result.token_ids == ordinary[: len(result.token_ids)]
        expected_len = next(
            (i + 1 for i, d in enumerate(drafts) if d != ordinary[i]), len(drafts) + 1
        )
        assert len(result.token_ids) == expected_len


def test_plain_greedy_batches_take_one_argmax_with_the_same_result(monkeypatch) -> None:
    """Groups of plain greedy requests skip per-row processing: the tokens are the general
    path's, over random drafts of every length (0 to 4) and agreement."""
    generator = torch.Generator().manual_seed(11)
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    groups, rows = [], 0
    logits = torch.randn(200, VOCAB, generator=generator)
    argmax = logits.argmax(dim=-1).tolist()
    while rows < 190:
        k = int(torch.randint(0, 5, (), generator=generator))
        agree = int(torch.randint(0, k + 1, (), generator=generator))
        drafts = [
            argmax[rows + i] if i < agree else (argmax[rows + i] + 1) % VOCAB for i in range(k)
        ]
        groups.append(VerifyGroup(row(greedy), drafts))
        rows += k + 1
    logits = logits[:rows]
    fast = [r.token_ids for r in verify(Sampler(0, torch.device("cpu")), logits.clone(), groups)]
    monkeypatch.setattr(verify_module, "plain_greedy", lambda _: False)
    slow = [r.token_ids for r in verify(Sampler(0, torch.device("cpu")), logits.clone(), groups)]
    assert fast == slow
    assert {len(tokens) for tokens in fast} == set(range(1, 6))


def test_min_tokens_still_masks_stop_tokens_on_draft_rows() -> None:
    """A request short of min_tokens is processed row by row: its stop token loses."""
    logits = torch.zeros(2, VOCAB)
    logits[:, 2] = 5.0  # the stop token would win
    logits[:, 3] = 1.0
    params = SamplingParams(temperature=0.0, min_tokens=4, max_tokens=8)
    stopping = SamplingRow(params, [1], [], frozenset({2}))
    [result] = verify(Sampler(0, torch.device("cpu")), logits, [VerifyGroup(stopping, [3])])
    assert result.token_ids == [3, 3]
