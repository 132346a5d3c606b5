"""Speculative decoding counters (torch-free), with the names of vLLM's metrics: verification
rounds (drafts), draft tokens scored, draft tokens accepted, accepted per position."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SpecDecodeStats:
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # [j]: rounds whose draft token j (0-based) was accepted.
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    # Proposals asked for: request-steps, and draft tokens in them.
    num_planned_requests: int = 0
    num_planned_tokens: int = 0

    def record(self, num_draft_tokens: int, num_accepted: int) -> None:
        """One verification round: num_draft_tokens scored, the first num_accepted accepted."""
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted
        per_pos = self.num_accepted_tokens_per_pos
        if len(per_pos) < num_draft_tokens:
            per_pos.extend([0] * (num_draft_tokens - len(per_pos)))
        for position in range(num_accepted):
            per_pos[position] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verification round: accepted drafts plus the target's own token."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    def copy(self) -> SpecDecodeStats:
        return SpecDecodeStats(
            self.num_drafts,
            self.num_draft_tokens,
            self.num_accepted_tokens,
            list(self.num_accepted_tokens_per_pos),
            self.num_planned_requests,
            self.num_planned_tokens,
        )
