"""`shared-prefix`: groups of requests that share a system prompt (prefix caching, routing)."""

from __future__ import annotations

import random

from corral.workloads.datasets.base import DATASETS, Dataset, Draft, num_wanted
from corral.workloads.datasets.random_lengths import draw_length
from corral.workloads.options import WorkloadOptions
from corral.workloads.text import filler_text
from corral.workloads.tokens import TextEncoder


@DATASETS.register("shared-prefix")
class SharedPrefix(Dataset):
    """num_groups system prompts of prefix_len words; each request picks a group at random and
    adds a question of about input_len words."""

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        count = num_wanted(self, options) or 0
        prefix_len = options.prefix_len or 256
        systems = [
            f"System {group}: " + filler_text(rng, prefix_len) + "\n\n"
            for group in range(options.num_groups)
        ]
        drafts = []
        for _ in range(count):
            group = rng.randrange(options.num_groups)
            num_words = draw_length(
                rng, options.input_len, options.range_ratio, options.length_distribution
            )
            prompt = systems[group] + "User: " + filler_text(rng, num_words)
            ids = tuple(encoder.encode(prompt))
            num_output = draw_length(
                rng, options.output_len, options.range_ratio, options.length_distribution
            )
            drafts.append(Draft(len(ids), num_output, prompt=prompt, prompt_token_ids=ids))
        return drafts
