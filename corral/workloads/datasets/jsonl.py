"""`jsonl`: any JSONL file, one request per line.

Each line holds "prompt" (text) or "prompt_token_ids" (ints), and the expected output length as
"output_len", "num_output_tokens" or "max_tokens"; an optional "arrival_time_s" makes the file a
trace (used by --arrival trace).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from corral.workloads.datasets.base import DATASETS, Dataset, Draft
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder

_OUTPUT_KEYS = ("output_len", "num_output_tokens", "max_tokens")


def _draft(record: object, where: str, encoder: TextEncoder, options: WorkloadOptions) -> Draft:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt = record.get("prompt")
    ids = record.get("prompt_token_ids")
    if ids is None:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{where}: needs a non-empty 'prompt' or 'prompt_token_ids'")
        ids = encoder.encode(prompt)
    elif not all(isinstance(i, int) and 0 <= i < options.vocab_size for i in ids) or not ids:
        raise ValueError(f"{where}: prompt_token_ids must be ints in [0, {options.vocab_size})")
    num_output = options.fixed_output_len or next(
        (record[key] for key in _OUTPUT_KEYS if key in record), None
    )
    if not isinstance(num_output, int) or num_output < 1:
        raise ValueError(f"{where}: needs an output length >= 1 in one of {_OUTPUT_KEYS}")
    arrival = record.get("arrival_time_s")
    if arrival is not None and not isinstance(arrival, (int, float)):
        raise ValueError(f"{where}: arrival_time_s must be a number, got {arrival!r}")
    return Draft(
        len(ids),
        num_output,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=tuple(ids),
        trace_time_s=None if arrival is None else float(arrival),
    )


@DATASETS.register("jsonl")
class JsonlDataset(Dataset):
    default_num_requests = None

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        if not options.dataset_path:
            raise ValueError("the jsonl dataset needs a file (--dataset-path FILE.jsonl)")
        path = Path(options.dataset_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        drafts = []
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not valid JSON: {error}") from None
                drafts.append(_draft(record, f"{path}:{number}", encoder, options))
                if options.num_requests is not None and len(drafts) == options.num_requests:
                    break
        timed = sum(draft.trace_time_s is not None for draft in drafts)
        if 0 < timed < len(drafts):
            raise ValueError(f"{path}: arrival_time_s is on {timed} of {len(drafts)} lines")
        return drafts
