from __future__ import annotations

import math

import pytest
import torch

from corral.model.sampler import Sampler, SamplingRow, _apply_top_k_top_p, position_seed
from corral.sampling_params import SamplingParams


def row(prompt=(1, 2), output=(), stop=frozenset(), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), list(prompt), list(output), frozenset(stop))


def sample(logits: torch.Tensor, rows: list[SamplingRow], seed: int = 0):
    return Sampler(seed, torch.device("cpu"))(logits.clone(), rows)


def test_greedy_picks_the_argmax_per_row():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    assert sample(logits, [row(temperature=0), row(temperature=0)]).token_ids == [1, 0]


def test_logit_bias_and_min_tokens_mask():
    logits = torch.tensor([[0.0, 1.0, 10.0, 0.0]])
    assert sample(logits, [row(temperature=0, logit_bias={3: 100.0})]).token_ids == [3]
    # Token 2 is a stop token: masked while fewer than min_tokens outputs exist.
    masked = row(temperature=0, min_tokens=2, output=[1], stop={2})
    assert sample(logits, [masked]).token_ids == [1]
    enough = row(temperature=0, min_tokens=2, output=[1, 1], stop={2})
    assert sample(logits, [enough]).token_ids == [2]


def test_repetition_penalty_matches_its_definition():
    logits = torch.tensor([[2.0, -1.0, 1.5, 0.5]])
    processed = logits.clone()
    sampler = Sampler(0, torch.device("cpu"))
    sampler.process(processed, [row(prompt=[0], output=[1], repetition_penalty=2.0)])
    torch.testing.assert_close(processed, torch.tensor([[1.0, -2.0, 1.5, 0.5]]))


def test_frequency_and_presence_penalties_use_output_counts_only():
    logits = torch.zeros(1, 4)
    sampler = Sampler(0, torch.device("cpu"))
    sampler.process(
        logits,
        [row(prompt=[3, 3], output=[1, 1, 2], frequency_penalty=0.5, presence_penalty=0.25)],
    )
    torch.testing.assert_close(logits, torch.tensor([[0.0, -1.25, -0.75, 0.0]]))


def test_top_k_top_p_min_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {tuple(sample(logits, [row(top_k=2, seed=s)]).token_ids) for s in range(200)}
    assert seen == {(0,), (1,)}
    seen = {sample(logits, [row(top_p=0.7, seed=s)]).token_ids[0] for s in range(200)}
    assert seen == {0, 1}
    seen = {sample(logits, [row(min_p=0.25, seed=s)]).token_ids[0] for s in range(200)}
    assert seen == {0, 1, 2}  # 0.15 >= 0.25 * 0.5, 0.05 is not
    assert {sample(logits, [row(top_p=0.01, seed=s)]).token_ids[0] for s in range(20)} == {0}


def test_top_p_on_a_flat_distribution_falls_back_to_an_exact_sort():
    vocab_size = 3000
    logits = torch.zeros(1, vocab_size)
    _apply_top_k_top_p(logits, [SamplingParams(top_p=0.4999)])  # k/3000 < 0.4999: k < 1500
    kept = torch.isfinite(logits).sum().item()
    assert kept == 1500


def test_samples_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = torch.log(probs).unsqueeze(0).repeat(4000, 1)
    rows = [row(temperature=1.0) for _ in range(4000)]
    counts = torch.bincount(torch.tensor(sample(logits, rows, seed=7).token_ids), minlength=3)
    expected = probs * 4000
    chi_square = (((counts - expected) ** 2) / expected).sum().item()
    assert chi_square < 13.8  # p = 0.001 for 2 degrees of freedom


def test_temperature_sharpens():
    logits = torch.log(torch.tensor([0.6, 0.4])).unsqueeze(0).repeat(2000, 1)
    cold = sample(logits, [row(temperature=0.2) for _ in range(2000)], seed=1).token_ids
    expected = 0.6**5 / (0.6**5 + 0.4**5)  # 0.884; std of the share ~0.007
    assert abs(sum(t == 0 for t in cold) / 2000 - expected) < 0.03


def test_seeded_draws_depend_only_on_seed_and_position():
    logits = torch.randn(1, 50)
    first = sample(logits, [row(seed=11, output=[1, 2, 3])], seed=1).token_ids
    again = sample(logits, [row(seed=11, output=[4, 5, 6])], seed=999).token_ids
    assert first == again
    assert position_seed(11, 3) != position_seed(11, 4) != position_seed(12, 3)
    draws = {sample(logits, [row(seed=11, output=[0] * k)]).token_ids[0] for k in range(30)}
    assert len(draws) > 1


def test_logprobs_are_raw_with_rank_and_top_n():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    result = sample(logits, [row(temperature=0, logprobs=2, logit_bias={3: 50.0})])
    (entry,) = result.logprobs
    raw = torch.log_softmax(logits[0], dim=-1)
    assert entry.token_ids == [3, 1, 2]
    assert entry.ranks == [4, 1, 2]
    assert entry.logprobs == pytest.approx([raw[3].item(), raw[1].item(), raw[2].item()])
    assert math.isclose(sum(math.exp(v) for v in raw.tolist()), 1.0, rel_tol=1e-6)
