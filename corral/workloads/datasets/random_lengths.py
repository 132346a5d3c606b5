"""`random`: synthetic prompts with lengths from a distribution (uniform or lognormal)."""

from __future__ import annotations

import math
import random

from corral.workloads.datasets.base import DATASETS, Dataset, Draft, num_wanted
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder, synthetic_token_ids


def draw_length(rng: random.Random, mean: int, spread: float, distribution: str) -> int:
    """A length >= 1 around mean: uniform in [mean(1 - spread), mean(1 + spread)], or lognormal
    with sigma = spread and the given mean."""
    if distribution == "lognormal" and spread > 0:
        mu = math.log(mean) - spread * spread / 2
        return max(1, round(rng.lognormvariate(mu, spread)))
    low = max(1, math.floor(mean * (1 - spread)))
    high = max(low, math.ceil(mean * (1 + spread)))
    return rng.randint(low, high)


@DATASETS.register("random")
class RandomDataset(Dataset):
    """Synthetic ids (optionally after a prefix of prefix_len ids shared by all requests)."""

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        count = num_wanted(self, options) or 0
        prefix: tuple[int, ...] = ()
        if options.prefix_len:
            prefix = tuple(
                synthetic_token_ids(options.seed + 7919, options.prefix_len, options.vocab_size)
            )
        drafts = []
        for _ in range(count):
            num_input = draw_length(
                rng, options.input_len, options.range_ratio, options.length_distribution
            )
            num_output = draw_length(
                rng, options.output_len, options.range_ratio, options.length_distribution
            )
            ids = None
            if prefix:
                suffix = synthetic_token_ids(rng.getrandbits(63), num_input, options.vocab_size)
                ids = prefix + tuple(suffix)
            drafts.append(Draft(len(prefix) + num_input, num_output, prompt_token_ids=ids))
        return drafts
