"""Reading the shared data sets: JSONL files and GSM8K's splits (one reader for the benchmark
workloads, the demo models' training and the length predictors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.paths import data_file, default_data_dir

__all__ = ["GSM8K_SPLITS", "data_file", "default_data_dir", "gsm8k_records", "read_jsonl"]

GSM8K_SPLITS = ("train", "test")
# Solutions written by models to GSM8K's test questions (a length predictor's training data).
GSM8K_MODEL_SOLUTIONS = "example_model_solutions"


def read_jsonl(path: str | Path, max_num_records: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped); ValueError names a malformed line."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if max_num_records is not None and len(records) >= max_num_records:
                break
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON: {error}") from None
    return records


def gsm8k_records(
    split: str, data_dir: str | Path | None = None, max_num_records: int | None = None
) -> list[dict[str, Any]]:
    """The raw records of a GSM8K split ("train", "test", or the model solutions file), in file
    order. ValueError for an unknown split; FileNotFoundError names the file and the override."""
    if split not in (*GSM8K_SPLITS, GSM8K_MODEL_SOLUTIONS):
        raise ValueError(
            f"gsm8k split {split!r} is not one of {(*GSM8K_SPLITS, GSM8K_MODEL_SOLUTIONS)}"
        )
    return read_jsonl(data_file(data_dir, "gsm8k", f"{split}.jsonl"), max_num_records)
