"""`azure-conv` and `azure-code`: replay of the Azure LLM inference traces (2023).

Each row has an arrival timestamp, a prompt length and an output length; prompts are synthetic
ids of that length. Patel et al., "Splitwise", ISCA 2024; data CC-BY 4.0 (Microsoft).
"""

from __future__ import annotations

import csv
import random
from datetime import date
from pathlib import Path

from corral.paths import data_file
from corral.workloads.datasets.base import DATASETS, Dataset, Draft
from corral.workloads.options import WorkloadOptions
from corral.workloads.tokens import TextEncoder

_FOLDER = "azure-llm-2023"


def parse_timestamp_s(text: str) -> float:
    """'2023-11-16 18:15:46.6805900' -> seconds since 1970-01-01 (any fractional digits)."""
    day, clock = text.strip().split(" ")
    hours, minutes, seconds = clock.split(":")
    days = date.fromisoformat(day).toordinal() - date(1970, 1, 1).toordinal()
    return days * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)


def read_trace(path: Path) -> list[tuple[float, int, int]]:
    """(timestamp_s, prompt tokens, output tokens) per row, in file order."""
    rows = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the columns {sorted(missing)}")
        for row in reader:
            rows.append(
                (
                    parse_timestamp_s(row["TIMESTAMP"]),
                    int(row["ContextTokens"]),
                    int(row["GeneratedTokens"]),
                )
            )
    return rows


class AzureTrace(Dataset):
    file_name = ""
    default_num_requests = None

    def drafts(
        self, options: WorkloadOptions, encoder: TextEncoder, rng: random.Random
    ) -> list[Draft]:
        path = (
            Path(options.dataset_path)
            if options.dataset_path
            else data_file(options.data_dir, _FOLDER, self.file_name)
        )
        rows = read_trace(path)[options.trace_offset :]
        if options.trace_offset and not rows:
            raise ValueError(f"trace_offset {options.trace_offset} skips the whole trace {path}")
        drafts = []
        for timestamp_s, num_prompt, num_output in rows:
            if options.sample_fraction < 1 and rng.random() >= options.sample_fraction:
                continue
            drafts.append(
                Draft(
                    max(1, num_prompt),
                    max(1, num_output),
                    trace_time_s=timestamp_s,
                    is_scalable=True,
                )
            )
            if options.num_requests is not None and len(drafts) == options.num_requests:
                break
        return drafts


@DATASETS.register("azure-conv")
class AzureConversation(AzureTrace):
    file_name = "AzureLLMInferenceTrace_conv.csv"


@DATASETS.register("azure-code")
class AzureCode(AzureTrace):
    file_name = "AzureLLMInferenceTrace_code.csv"
