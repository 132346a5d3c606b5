"""Self-consistency in the simulator: `stop_when_agreed = k` stops a request's samples still
generating once k finished ones agree, as the engine's output processor does
(corral/engine/consensus.py). The simulator has no text, so each finished sample's answer is
drawn: the right one with probability answer_accuracy, else one of num_wrong_answers wrong ones
(uniformly). Agreement is then decided by the engine's rule on those answers.

A request's samples all get its one output length in the workload (a client forcing lengths
with ignore_eos sees that too); real chains of thought end at different points, which is what
lets agreement stop the slower samples. sample_length_spread s gives each sample
round(length x (1 - s x u)) tokens, u uniform in [0, 1): no sample runs longer than its
request's length, and the fastest finish first."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

DEFAULT_ANSWER_ACCURACY = 0.7
DEFAULT_NUM_WRONG_ANSWERS = 4


@dataclass(frozen=True, slots=True)
class SimVoting:
    stop_when_agreed: int
    answer_accuracy: float = DEFAULT_ANSWER_ACCURACY
    num_wrong_answers: int = DEFAULT_NUM_WRONG_ANSWERS
    sample_length_spread: float = 0.0

    def __post_init__(self) -> None:
        if self.stop_when_agreed < 2:
            raise ValueError(f"stop_when_agreed must be >= 2, got {self.stop_when_agreed}")
        if not 0 <= self.answer_accuracy <= 1:
            raise ValueError(f"answer_accuracy must be in [0, 1], got {self.answer_accuracy}")
        if self.num_wrong_answers < 1:
            raise ValueError(f"num_wrong_answers must be >= 1, got {self.num_wrong_answers}")
        if not 0 <= self.sample_length_spread < 1:
            raise ValueError(
                f"sample_length_spread must be in [0, 1), got {self.sample_length_spread}"
            )


class Ballots:
    """The answers of each request's finished samples, drawn as SimVoting says."""

    def __init__(self, voting: SimVoting, seed: int) -> None:
        self.voting = voting
        self._rng = random.Random(seed)
        self._votes: dict[str, Counter[int]] = {}

    def cast(self, request_id: str) -> bool:
        """A sample of request_id finished: draw its answer; True once k samples agree."""
        rng, voting = self._rng, self.voting
        right = rng.random() < voting.answer_accuracy
        answer = 0 if right else 1 + rng.randrange(voting.num_wrong_answers)
        votes = self._votes.setdefault(request_id, Counter())
        votes[answer] += 1
        return votes[answer] >= voting.stop_when_agreed

    def sample_length(self, length: int) -> int:
        """One sample's output length for a request of length tokens."""
        spread = self.voting.sample_length_spread
        if not spread:
            return length
        return max(1, round(length * (1 - spread * self._rng.random())))

    def forget(self, request_id: str) -> None:
        self._votes.pop(request_id, None)
