"""Prompt token ids without a model: deterministic synthetic ids, and text-to-ids encoders.

The simulator needs token ids (the prefix cache and prefix-aware routing key on them). With a
tokenizer the ids are real; without one, WordHashEncoder maps each whitespace-led word to a
stable id, so that texts sharing a prefix share a prefix of ids.
"""

from __future__ import annotations

import re
import zlib
from typing import Protocol

import numpy as np

_WORD = re.compile(r"\s*\S+|\s+$")


def synthetic_token_ids(seed: int, num_tokens: int, vocab_size: int) -> list[int]:
    """num_tokens ids in [1, vocab_size), a pure function of (seed, num_tokens, vocab_size)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    rng = np.random.default_rng(seed)
    return rng.integers(1, vocab_size, size=num_tokens).tolist()


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


class WordHashEncoder:
    """One id per word (with its leading whitespace): crc32 of the word, folded into the vocab."""

    def __init__(self, vocab_size: int = 32000) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        modulus = self.vocab_size - 1
        return [1 + zlib.crc32(word.encode()) % modulus for word in _WORD.findall(text)]


class TokenizerEncoder:
    """A Hugging Face tokenizer directory, without special tokens (prompts are raw text)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self.vocab_size = len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))


def make_encoder(tokenizer: str | None, vocab_size: int) -> TextEncoder:
    """A TokenizerEncoder for a tokenizer directory, else a WordHashEncoder over vocab_size."""
    if tokenizer:
        return TokenizerEncoder(tokenizer)
    return WordHashEncoder(vocab_size)


# The token the simulator "samples" for every output position. Multi-turn workloads use it for
# earlier replies in a later turn's prompt, so that the reply's KV blocks are reused as in a real
# engine. Synthetic prompt ids never use it (they are drawn from [1, vocab_size)).
PLACEHOLDER_TOKEN_ID = 0
