"""`multi-turn`: conversations whose every turn extends the previous turn's context.

Turn k's prompt is turn k-1's prompt, then turn k-1's reply, then a new user message. In the
token ids the reply is PLACEHOLDER_TOKEN_ID repeated (what the simulator generates), so a prefix
cache reuses the whole previous turn; the prompt text carries filler words in its place. A turn
is issued think_time_s after the previous turn of its conversation finished.
"""

from __future__ import annotations

import random

from corral.workloads.datasets.base import DATASETS, Dataset, Draft, num_wanted
from corral.workloads.datasets.random_lengths import draw_length
from corral.workloads.options import WorkloadOptions
from corral.workloads.text import filler_text
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID, TextEncoder


@DATASETS.register("multi-turn")
class MultiTurn(Dataset):
    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        count = num_wanted(self, options) or 0
        num_conversations = -(-count // options.num_turns)
        drafts: list[Draft] = []
        for conversation in range(num_conversations):
            text, ids = "", ()
            for turn in range(options.num_turns):
                if len(drafts) == count:
                    return drafts
                num_words = draw_length(
                    rng, options.input_len, options.range_ratio, options.length_distribution
                )
                message = filler_text(rng, num_words)
                segment = f"User: {message}\nAssistant:"
                if turn:
                    segment = "\n" + segment
                text += segment
                ids = ids + tuple(encoder.encode(segment))
                num_output = draw_length(
                    rng, options.output_len, options.range_ratio, options.length_distribution
                )
                drafts.append(
                    Draft(
                        len(ids),
                        num_output,
                        prompt=text,
                        prompt_token_ids=ids,
                        conversation_index=conversation,
                        turn_index=turn,
                        new_prompt=message,
                    )
                )
                text += " " + filler_text(rng, num_output)
                ids = ids + (PLACEHOLDER_TOKEN_ID,) * num_output
        return drafts
