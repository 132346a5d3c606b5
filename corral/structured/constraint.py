"""OutputConstraint: one request's constraint on its next token, advanced token by token.

Phases: an optional reasoning block (params.ReasoningParams), then the grammar (if any). While
the output may still be opening the block (start_token_ids not yet complete or refuted), the
allowed set is the grammar's plus the next start token; inside the block nothing is constrained
until max_reasoning_tokens, after which end_token_ids are forced; the grammar starts after them.

Every accepted token pushes the phase it was accepted in, so rollback (rejected speculative
drafts) restores the exact state. Invariant: len(self._history) == tokens accepted so far.
"""

from __future__ import annotations

import enum
from typing import Any

from corral.structured.backend import Matcher
from corral.structured.bitmask import set_bit
from corral.structured.params import ReasoningParams


class Phase(enum.IntEnum):
    OPENING = 0  # the output may be opening the reasoning block
    REASONING = 1
    GRAMMAR = 2  # after the block (or without one): the grammar, or nothing, constrains


class OutputConstraint:
    """What a request may sample next: `fill()` writes it into a bitmask row, `accept()` and
    `rollback()` move along the output; `matcher` is the grammar's (None: no grammar)."""

    __slots__ = ("matcher", "reasoning", "_phase", "_num_reasoning", "_tail", "_history")

    def __init__(self, matcher: Matcher | None, reasoning: ReasoningParams | None) -> None:
        self.matcher = matcher
        self.reasoning = reasoning
        self._phase = Phase.GRAMMAR
        if reasoning is not None:
            self._phase = Phase.REASONING if reasoning.starts_in_reasoning else Phase.OPENING
        self._num_reasoning = 0  # tokens in the reasoning block so far
        self._tail: tuple[int, ...] = ()  # OPENING: start tokens seen; REASONING: last tokens
        # Per accepted token: the state before it, and whether the matcher took it.
        self._history: list[tuple[Phase, int, tuple[int, ...], bool]] = []

    def fill(self, bitmask: Any, row: int) -> bool:
        """Write the allowed next tokens into row `row` of an int32 bitmask [rows, words];
        False (row untouched) when the next token is not constrained."""
        phase, reasoning, matcher = self._phase, self.reasoning, self.matcher
        if phase == Phase.REASONING:
            assert reasoning is not None
            budget = reasoning.max_reasoning_tokens
            if budget is None or self._num_reasoning < budget:
                return False
            bitmask[row].zero_()
            set_bit(bitmask, row, reasoning.end_token_ids[self._ended_prefix()])
            return True
        if matcher is None:
            return False
        matcher.fill_bitmask(bitmask, row)
        if phase == Phase.OPENING:
            assert reasoning is not None
            set_bit(bitmask, row, reasoning.start_token_ids[len(self._tail)])
        return True

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token. False: the grammar forbids it (state unchanged)."""
        before = (self._phase, self._num_reasoning, self._tail)
        consumed = self._advance(token_id)
        if consumed is None:
            self._phase, self._num_reasoning, self._tail = before
            return False
        self._history.append((*before, consumed))
        return True

    def _advance(self, token_id: int) -> bool | None:
        """Move past token_id: True if the matcher took it, False if no grammar did, None if
        the grammar forbids it."""
        reasoning = self.reasoning
        if self._phase == Phase.OPENING:
            assert reasoning is not None
            start = reasoning.start_token_ids
            if token_id == start[len(self._tail)]:
                self._tail = (*self._tail, token_id)
                if len(self._tail) == len(start):
                    self._phase, self._tail = Phase.REASONING, ()
                return False
            self._phase, self._tail = Phase.GRAMMAR, ()  # no reasoning block after all
        if self._phase == Phase.REASONING:
            assert reasoning is not None
            end = reasoning.end_token_ids
            self._num_reasoning += 1
            self._tail = (*self._tail, token_id)[-len(end) :]
            if self._tail == end:
                self._phase, self._tail = Phase.GRAMMAR, ()
            return False
        if self.matcher is None:
            return False
        return True if self.matcher.accept(token_id) else None

    def rollback(self, num_tokens: int) -> None:
        """Undo the last num_tokens accepted tokens."""
        num_consumed = 0
        for _ in range(num_tokens):
            self._phase, self._num_reasoning, self._tail, consumed = self._history.pop()
            num_consumed += consumed
        if num_consumed and self.matcher is not None:
            self.matcher.rollback(num_consumed)

    def _ended_prefix(self) -> int:
        """How many end tokens the block's tail already holds (the next one to force)."""
        end = self.reasoning.end_token_ids if self.reasoning else ()
        for length in range(min(len(end) - 1, len(self._tail)), 0, -1):
            if self._tail[-length:] == end[:length]:
                return length
        return 0


def new_constraint(
    backend: Any, compiled: Any, reasoning: ReasoningParams | None, stop_token_ids: list[int]
) -> OutputConstraint:
    """A constraint at the start of a request's output."""
    matcher = None
    if compiled is not None:
        matcher = backend.matcher(compiled, stop_token_ids)
    return OutputConstraint(matcher, reasoning)
