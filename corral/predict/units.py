"""Length units: what a predicted "token" is. Lengths and the length features are counted in the
unit the predictor was trained with, recorded in its file.

- "words": words, numbers and punctuation marks (regex \\w+|[^\\w\\s]); dependency-free and
  deterministic, about 1.2-1.4 BPE tokens each on English text;
- a path to a Hugging Face tokenizer.json (or a directory holding one): that tokenizer's tokens,
  e.g. the served model's, so that predictions are in the model's own tokens.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

_WORD = re.compile(r"\w+|[^\w\s]")


class LengthUnit(ABC):
    name: str

    @abstractmethod
    def count(self, text: str) -> int:
        """Length of text in this unit."""


class WordUnit(LengthUnit):
    name = "words"

    def count(self, text: str) -> int:
        return len(_WORD.findall(text))


class TokenizerUnit(LengthUnit):
    """Tokens of a Hugging Face fast tokenizer (tokenizers library, no torch)."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self.name = str(path)
        self._tokenizer = Tokenizer.from_file(str(file))

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def make_unit(name: str) -> LengthUnit:
    """ "words", or a tokenizer path."""
    return WordUnit() if name == "words" else TokenizerUnit(name)


def words(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation: the tokens n-gram features hash."""
    return _WORD.findall(text.lower())
