"""Checks that generated text reads as language: the share of known words and the absence of
repeated-token loops (neither looks at whether an answer is right)."""

from __future__ import annotations

from collections.abc import Sequence

from corral.demo.corpus import words_of


def known_word_share(text: str, vocabulary: set[str]) -> float:
    """The share of the text's words (letters, inner apostrophe; lower-cased) in vocabulary."""
    words = words_of(text)
    if not words:
        return 0.0
    return sum(word in vocabulary for word in words) / len(words)


def max_loop_repeats(token_ids: Sequence[int], max_period: int = 32) -> int:
    """The most times any block of 1..max_period tokens repeats back to back (1: no repeat).

    [5, 6, 5, 6, 5, 6] gives 3 (the block [5, 6], three times in a row).
    """
    best = 1
    for period in range(1, max_period + 1):
        run = 0  # consecutive i with token_ids[i] == token_ids[i - period]
        for i in range(period, len(token_ids)):
            run = run + 1 if token_ids[i] == token_ids[i - period] else 0
            # the last run + period tokens are the block repeated (run + period) // period times
            best = max(best, (run + period) // period)
    return best
