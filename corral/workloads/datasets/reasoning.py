"""`reasoning`: test-time reasoning load. GSM8K questions as prompts, long outputs, n samples each.

Each request is one GSM8K question (the split of options.split, shuffled with the workload's
seed) asked to reason step by step, sent with n = samples_per_request (default 8): the samples
share the prompt's KV blocks in the engine and in the simulator. Output lengths stand for
chains of thought: lognormal with mean reasoning_output_len (default 1536 tokens) and sigma
reasoning_output_sigma (default 0.5: the middle 90% of lengths span about 0.4x to 2x the
median), then capped by max_output_len and by the context that max_model_len leaves after the
prompt (the output may fill it, where other datasets keep to half). A request's samples all get
its one length (the client forces it with ignore_eos); fixed_output_len replaces the draw.

The prompt is plain text (no template), so it suits `--endpoint chat` (the server's chat
template wraps it) as well as completions.
"""

from __future__ import annotations

import math
import random

from corral.workloads.data import gsm8k_records, read_jsonl
from corral.workloads.datasets.base import DATASETS, Dataset, Draft, num_wanted
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder

INSTRUCTION = "Think step by step, then give the final answer after '####'."


def reasoning_prompt(question: str) -> str:
    """The prompt of one question: the question, then the instruction to reason."""
    return f"{question.strip()}\n{INSTRUCTION}"


def draw_reasoning_length(rng: random.Random, mean: int, sigma: float) -> int:
    """A lognormal length >= 1 with the given mean (sigma 0: the mean itself)."""
    if sigma == 0:
        return mean
    mu = math.log(mean) - sigma * sigma / 2
    return max(1, round(rng.lognormvariate(mu, sigma)))


@DATASETS.register("reasoning")
class Reasoning(Dataset):
    default_num_requests = 100
    default_samples_per_request = 8

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        if options.split not in ("train", "test"):
            raise ValueError(f"reasoning split must be train or test, got {options.split!r}")
        records = (
            read_jsonl(options.dataset_path)
            if options.dataset_path
            else gsm8k_records(options.split, options.data_dir)
        )
        order = list(range(len(records)))
        rng.shuffle(order)
        order = order[: num_wanted(self, options)]
        drafts = []
        for index in order:
            prompt = reasoning_prompt(records[index]["question"])
            ids = tuple(encoder.encode(prompt))
            num_output = options.fixed_output_len or draw_reasoning_length(
                rng, options.reasoning_output_len, options.reasoning_output_sigma
            )
            drafts.append(
                Draft(
                    len(ids), num_output, prompt=prompt, prompt_token_ids=ids, may_fill_context=True
                )
            )
        return drafts
