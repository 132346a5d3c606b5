"""Shared fixtures: a small real BPE tokenizer and tiny random-weight models built with
transformers (the oracle), cached for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A deterministic English corpus for the test tokenizer (written for these tests).
_CORPUS = [
    "The quick brown fox jumps over the lazy dog while the farmer counts his sheep.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "A train leaves the station at noon; another follows two hours later at twice the speed.",
    "Serving large language models efficiently needs batching, paging and careful scheduling.",
    "Unicode text such as café, naïve, Ελληνικά, 日本語 and emoji 🙂 must round-trip exactly.",
    "How many apples are left if Tom eats three of the twelve apples in the basket?",
    "The answer is 42. She paid $3.50 for each of the 7 notebooks, so 7 * 3.50 = 24.50 dollars.",
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corral.demo.bpe import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(_CORPUS * 20, vocab_size=512)
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return path


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture
def tiny_gsm8k_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory holding a small GSM8K test split of 240 made-up questions (a fresh
    clone has no ../shared/data): CORRAL_DATA_DIR points here for the test."""
    import json

    folder = tmp_path / "gsm8k"
    folder.mkdir()
    lines = []
    for index in range(240):
        question = (
            f"Tom has {index + 2} apples and buys {3 * index + 1} more in shop {index}. "
            "How many apples does he have now?"
        )
        answer = f"{index + 2} + {3 * index + 1} = {4 * index + 3}\n#### {4 * index + 3}"
        lines.append(json.dumps({"question": question, "answer": answer}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("CORRAL_DATA_DIR", str(tmp_path))
    return tmp_path


def build_tiny_model(
    path: Path, tokenizer_dir: Path, architecture: str, seed: int, **config: object
) -> Path:
    """A tiny random float32 model (initializer_range 0.2) with the tests' tokenizer, saved
    at path; config overrides the architecture's defaults (TINY_SHAPE is not applied)."""
    from corral.demo.random_model import build_random_model

    build_random_model(
        path,
        architecture=architecture,
        seed=seed,
        dtype="float32",
        initializer_range=0.2,
        tokenizer=_load_tokenizer(tokenizer_dir),
        **config,
    )
    return path


TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)

# name -> (architecture, config overrides): every supported family and option.
TINY_MODELS = {
    "llama": ("llama", {}),
    "llama3-rope": (
        "llama",
        dict(
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=128,
            ),
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "mistral": ("mistral", dict(sliding_window=64)),
}


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path):
    """tiny_model_factory(name) -> path of a saved tiny random model (built once per name)."""
    from corral.demo.random_model import build_random_model

    built: dict[str, Path] = {}

    def make(name: str = "llama") -> Path:
        if name not in built:
            architecture, overrides = TINY_MODELS[name]
            path = tmp_path_factory.mktemp(f"model-{name}")
            build_random_model(
                path,
                architecture=architecture,
                seed=1234,
                dtype="float32",
                initializer_range=0.2,
                tokenizer=_load_tokenizer(tokenizer_dir),
                **{**TINY_SHAPE, **overrides},
            )
            built[name] = path
        return built[name]

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")
