from __future__ import annotations

import math

import pytest
import torch

from corral.model.sampler import GREEDY_BELOW_TEMPERATURE, Sampler, SamplingRow
from corral.sampling_params import SamplingParams


def row(**params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), [1, 2], [], frozenset())


def sample(logits: torch.Tensor, rows: list[SamplingRow], seed: int = 0):
    return Sampler(seed, torch.device("cpu"))(logits.clone(), rows)


@pytest.mark.parametrize("temperature", [1e-38, 1e-6, GREEDY_BELOW_TEMPERATURE / 2])
def test_a_temperature_below_the_epsilon_samples_greedily(temperature):
    # Large logits: dividing them by 1e-38 overflows to inf, and softmax(inf) is NaN.
    logits = torch.tensor([[0.5, 40.0, 39.0, -3.0], [7.0, -1.0, 2.0, 9.0], [1.0, 2.0, 3.0, 2.5]])
    greedy = sample(logits, [row(temperature=0)] * 3).token_ids
    assert greedy == [1, 3, 2]
    for seed in range(5):
        rows = [row(temperature=temperature, logprobs=1) for _ in range(3)]
        output = sample(logits, rows, seed=seed)
        assert output.token_ids == greedy
        for logprobs in output.logprobs:
            assert logprobs is not None
            assert all(math.isfinite(value) for value in logprobs.logprobs)


def test_tiny_temperature_rows_beside_random_rows_in_one_batch():
    logits = torch.tensor([[0.0, 30.0, 29.5], [0.0, 30.0, 29.5], [9.0, 0.0, 8.5]])
    rows = [row(temperature=1e-38), row(temperature=1.0, seed=3), row(temperature=1e-30)]
    token_ids = sample(logits, rows).token_ids
    assert token_ids[0] == 1 and token_ids[2] == 0
    assert token_ids[1] in (0, 1, 2)


def test_the_epsilon_itself_still_samples():
    # At the threshold the temperature divides as usual: a flat row keeps all its tokens.
    logits = torch.zeros(1, 3)
    seen = {
        sample(logits, [row(temperature=GREEDY_BELOW_TEMPERATURE, seed=s)]).token_ids[0]
        for s in range(60)
    }
    assert seen == {0, 1, 2}
