"""(prompt, output length) data sets: JSONL files and the builder for GSM8K.

A row is {"prompt": str, "output_len": int} (or {"prompt", "output"}: the length is then counted
in the unit), plus optional "group" (rows of one group stay on one side of a split, e.g. the
several model solutions of one question) and "source".

GSM8K (../shared/data/gsm8k, see its README): prompts are the questions; "model" lengths come
from example_model_solutions.jsonl (one row per question and model: 6B and 175B GPT-3,
fine-tuned and verifier-ranked), "reference" lengths from the human-written answers in
train.jsonl and test.jsonl.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corral.predict.units import LengthUnit
from corral.workloads.data import GSM8K_MODEL_SOLUTIONS, GSM8K_SPLITS, gsm8k_records

GSM8K_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
GSM8K_SOURCES = ("model", "reference")


@dataclass(frozen=True, slots=True)
class LengthSample:
    prompt: str
    output_len: int
    group: str = ""
    source: str = ""


def read_jsonl(path: str | Path, unit: LengthUnit | None = None) -> list[LengthSample]:
    """Load samples; ValueError names the line of a malformed row."""
    samples = []
    with Path(path).open() as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = row["prompt"]
                if "output_len" in row:
                    length = int(row["output_len"])
                elif unit is not None:
                    length = unit.count(row["output"])
                else:
                    raise KeyError("output_len")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    f"{path}:{number}: expected {{'prompt': str, 'output_len': int}} ({error})"
                ) from None
            if not isinstance(prompt, str) or length < 0:
                raise ValueError(f"{path}:{number}: prompt must be text and output_len >= 0")
            samples.append(
                LengthSample(prompt, length, str(row.get("group", "")), str(row.get("source", "")))
            )
    return samples


def write_jsonl(samples: Iterable[LengthSample], path: str | Path) -> int:
    count = 0
    with Path(path).open("w") as file:
        for sample in samples:
            row = {"prompt": sample.prompt, "output_len": sample.output_len}
            if sample.group:
                row["group"] = sample.group
            if sample.source:
                row["source"] = sample.source
            file.write(json.dumps(row) + "\n")
            count += 1
    return count


def gsm8k_samples(
    unit: LengthUnit, source: str = "model", data_dir: str | Path | None = None
) -> list[LengthSample]:
    """GSM8K (question, solution length) rows, lengths counted in unit. FileNotFoundError names
    the missing file and the CORRAL_DATA_DIR override."""
    if source not in GSM8K_SOURCES:
        raise ValueError(f"gsm8k source {source!r} is not one of {GSM8K_SOURCES}")
    samples = []
    if source == "model":
        for row in gsm8k_records(GSM8K_MODEL_SOLUTIONS, data_dir):
            question = row["question"]
            for model in GSM8K_MODELS:
                solution = row[model]["solution"]
                samples.append(LengthSample(question, unit.count(solution), question, model))
        return samples
    for split_name in GSM8K_SPLITS:
        for row in gsm8k_records(split_name, data_dir):
            question = row["question"]
            samples.append(LengthSample(question, unit.count(row["answer"]), question, "reference"))
    return samples


def split(
    samples: Sequence[LengthSample], holdout_fraction: float, seed: int
) -> tuple[list[LengthSample], list[LengthSample]]:
    """(train, held-out), by group (a row's group, else its prompt), reproducibly for a seed."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    train: list[LengthSample] = []
    held_out: list[LengthSample] = []
    salt = f"{seed}:".encode()
    for sample in samples:
        key = (sample.group or sample.prompt).encode()
        draw = zlib.crc32(salt + key) / 2**32
        (held_out if draw < holdout_fraction else train).append(sample)
    if not train or not held_out:
        raise ValueError(f"{len(samples)} samples are too few to hold out {holdout_fraction:.0%}")
    return train, held_out


def lengths_of(samples: Sequence[LengthSample]) -> np.ndarray:
    return np.array([sample.output_len for sample in samples], dtype=np.float64)
