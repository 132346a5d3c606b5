"""Self-consistency: n samples of one prompt vote on an answer (Wang et al., 2023), and with
`stop_when_agreed = k` the samples still generating stop as soon as k finished samples agree
(they end with finish_reason "stop", stop_reason "agreed"), saving the tokens a majority no
longer needs.

A sample's answer is the last match of `answer_pattern` in its text (its first group if it has
one; default: the last number, commas dropped), so that "#### 1,234" and "the answer is 1234."
agree. The request's output carries the consensus: the answer with the most votes among the
finished samples (ties to the one reached first), its votes, and whether k agreed early.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# The last number of a text: an optional sign, digits with optional thousands commas, decimals.
DEFAULT_ANSWER_PATTERN = r"-?\d[\d,]*(?:\.\d+)?"
MAX_ANSWER_PATTERN_CHARS = 512
AGREED = "agreed"  # the stop_reason of a sample stopped because the others agreed


@dataclass(frozen=True, slots=True)
class Consensus:
    answer: str | None  # None: no finished sample had an answer
    num_votes: int
    num_answered: int  # finished samples with an answer
    agreed_early: bool  # stop_when_agreed stopped samples


def compile_answer_pattern(pattern: str | None) -> re.Pattern[str]:
    """The pattern (default: the last number); ValueError naming answer_pattern when it is too
    long, does not compile, or has more than one group."""
    if pattern is None:
        return _DEFAULT
    if len(pattern) > MAX_ANSWER_PATTERN_CHARS:
        raise ValueError(
            f"answer_pattern must be at most {MAX_ANSWER_PATTERN_CHARS} characters, "
            f"got {len(pattern)}"
        )
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"answer_pattern {pattern!r} is not a valid regex: {error}") from None
    if compiled.groups > 1:
        raise ValueError(
            f"answer_pattern must have at most one group (the answer), got {compiled.groups}"
        )
    return compiled


_DEFAULT = re.compile(DEFAULT_ANSWER_PATTERN)


def extract_answer(text: str, pattern: re.Pattern[str]) -> str | None:
    """The last match's answer (its group when it has one), stripped; numbers lose their
    thousands commas and a trailing period."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    answer = (last.group(1) if pattern.groups else last.group(0)) or ""
    answer = answer.strip().rstrip(".")
    if re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", answer):
        answer = answer.replace(",", "")
    return answer or None


def vote(answers: list[str | None], agreed_early: bool = False) -> Consensus:
    """The answer with the most votes (the first to reach that count wins a tie)."""
    counts = Counter(answer for answer in answers if answer is not None)
    if not counts:
        return Consensus(None, 0, 0, agreed_early)
    best = max(counts.values())
    answer = next(a for a in answers if a is not None and counts[a] == best)
    return Consensus(answer, best, sum(counts.values()), agreed_early)
