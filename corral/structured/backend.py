"""Grammar backends: compile StructuredOutputParams against a tokenizer into something a
Matcher walks token by token. A registered plug-in (`--structured-output-backend`); xgrammar is
the one shipped (xgrammar_backend.py). Library-free: backends import their library themselves.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from corral.registry import Registry
from corral.structured.params import StructuredOutputParams


class GrammarError(ValueError):
    """The constraint cannot be compiled; field: the request field at fault, reason: why (the
    library's own words)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Matcher(Protocol):
    """One request's position in its grammar."""

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 bitmask [rows, words]."""

    def accept(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the grammar forbids it."""

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens (as many as speculative decoding
        verifies: up to 15)."""


class GrammarBackend:
    """Compiles constraints for one tokenizer. Subclasses implement `_compile`, `check` and
    `matcher`; compile() keeps the most recent `max_num_cached` results by cache_key()."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], max_num_cached: int = 256
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self.max_num_cached = max_num_cached
        self._cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()

    def compile(self, params: StructuredOutputParams) -> Any:
        """The compiled grammar (cached); raises GrammarError. Thread-safe enough: a race
        compiles twice and keeps one."""
        compiled = self.cached(params)
        if compiled is not None:
            return compiled
        compiled = self._compile(params)
        self._cache[params.cache_key()] = compiled
        while len(self._cache) > self.max_num_cached:
            self._cache.popitem(last=False)
        return compiled

    def cached(self, params: StructuredOutputParams) -> Any | None:
        """The compiled grammar if it is in the cache (no compile), else None."""
        key = params.cache_key()
        compiled = self._cache.get(key)
        if compiled is not None:
            self._cache.move_to_end(key)
        return compiled

    def _compile(self, params: StructuredOutputParams) -> Any:
        raise NotImplementedError

    @staticmethod
    def check(params: StructuredOutputParams) -> None:
        """Raise GrammarError if the constraint cannot compile, without a tokenizer (cheap: for
        the frontend's admission)."""
        raise NotImplementedError

    def matcher(self, compiled: Any, stop_token_ids: list[int]) -> Matcher:
        """A fresh matcher at the start of the grammar; stop_token_ids end the output."""
        raise NotImplementedError


GRAMMAR_BACKENDS: Registry[GrammarBackend] = Registry("structured output backend")
DEFAULT_BACKEND = "xgrammar"
