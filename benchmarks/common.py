"""Shared pieces of the benchmark scripts: the reference random model and the Azure lengths."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("CORRAL_DATA_DIR", REPO.parent / "shared" / "data"))


def smollm_shaped_model(cache: Path | None = None) -> Path:
    """A random-weight model shaped like SmolLM-135M (bf16 on disk), built once and reused."""
    from corral.demo import _fallback_corpus, cache_dir
    from corral.demo.bpe import train_byte_level_bpe
    from corral.demo.random_model import SMOLLM_135M_SHAPE, build_random_model

    target = (cache or cache_dir()) / "bench-smollm-135m-random"
    if not (target / "config.json").is_file():
        tokenizer = train_byte_level_bpe(_fallback_corpus(), vocab_size=2048)
        shape = dict(SMOLLM_135M_SHAPE)
        build_random_model(
            target, seed=0, dtype="bfloat16", initializer_range=0.02, tokenizer=tokenizer, **shape
        )
    return target


def azure_conv_lengths(
    num_requests: int, length_scale: float, max_model_len: int, path: Path | None = None
) -> list[tuple[int, int]]:
    """(prompt, output) lengths of the first requests of the Azure conversation trace, each
    multiplied by length_scale (at least 1) and the prompt cut so prompt + output fits."""
    path = path or data_dir() / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
    lengths = []
    with open(path) as handle:
        for row in csv.DictReader(handle):
            output = max(1, round(int(row["GeneratedTokens"]) * length_scale))
            output = min(output, max_model_len // 2)
            prompt = max(1, round(int(row["ContextTokens"]) * length_scale))
            prompt = min(prompt, max_model_len - output)
            lengths.append((prompt, output))
            if len(lengths) == num_requests:
                break
    return lengths


def random_prompts(lengths: list[tuple[int, int]], vocab_size: int, seed: int = 0):
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(prompt)] for prompt, _ in lengths]
