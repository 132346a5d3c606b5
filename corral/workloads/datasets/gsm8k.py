"""`gsm8k`: real grade-school math questions (Cobbe et al. 2021, MIT), optionally k-shot.

With num_shots = k, every prompt starts with the same k worked examples from the train split,
so requests share a long prefix (a prefix-caching workload). The output length is the length of
the reference solution under the workload's encoder, unless fixed_output_len is set.
"""

from __future__ import annotations

import random

from corral.workloads.data import gsm8k_records, read_jsonl
from corral.workloads.datasets.base import DATASETS, Dataset, Draft
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder


def format_example(question: str, answer: str | None) -> str:
    body = f"Question: {question.strip()}\nAnswer:"
    return body if answer is None else f"{body} {answer.strip()}\n\n"


@DATASETS.register("gsm8k")
class GSM8K(Dataset):
    default_num_requests = None

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        if options.split not in ("train", "test"):
            raise ValueError(f"gsm8k split must be train or test, got {options.split!r}")
        records = (
            read_jsonl(options.dataset_path)
            if options.dataset_path
            else gsm8k_records(options.split, options.data_dir)
        )
        shots = ""
        if options.num_shots:
            train = gsm8k_records("train", options.data_dir)
            if options.num_shots > len(train):
                raise ValueError(
                    f"num_shots {options.num_shots} exceeds the {len(train)} train examples"
                )
            examples = train[: options.num_shots]
            shots = "".join(format_example(r["question"], r["answer"]) for r in examples)
        order = list(range(len(records)))
        rng.shuffle(order)
        if options.num_requests is not None:
            order = order[: options.num_requests]
        drafts = []
        for index in order:
            record = records[index]
            prompt = shots + format_example(record["question"], None)
            ids = tuple(encoder.encode(prompt))
            num_output = (
                options.fixed_output_len
                if options.fixed_output_len
                else max(1, len(encoder.encode(" " + record["answer"].strip())))
            )
            drafts.append(Draft(len(ids), num_output, prompt=prompt, prompt_token_ids=ids))
        return drafts
