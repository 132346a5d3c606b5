"""The proposer plug-in interface (torch-free): a proposer guesses the next tokens of running
requests; the target model verifies them in one forward pass."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from corral.registry import Registry
from corral.sampling_params import SamplingParams


@dataclass(slots=True)
class ProposalRequest:
    """One request to propose for. token_ids are its verified tokens (prompt then output); the
    proposer returns at most max_num_tokens tokens that would follow them."""

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    max_num_tokens: int
    params: SamplingParams
    # For proposers with needs_hidden_states (EAGLE-style heads): the target's final hidden
    # states [n, hidden_size] at the positions computed and verified this step (the real token
    # and the accepted drafts), the last one being the position the next token follows.
    hidden_states: Any = None


class Proposal(NamedTuple):
    """Proposed token ids and, for a proposer that samples them, the distribution each was drawn
    from (a [len(token_ids), vocab] tensor of probabilities; None: each token was chosen
    deterministically, a point mass, which is what greedy requests always get)."""

    token_ids: list[int]
    probs: Any = None


class Proposer(ABC):
    """Guesses continuations. Stateless proposers ignore forget(); stateful ones (a draft model's
    KV, a suffix tree over recent outputs) drop what they keep for the given requests."""

    # Set by the registry's name; shown in metrics.
    name: str = ""
    # True: the executor passes the target's hidden states in ProposalRequest.hidden_states.
    needs_hidden_states: bool = False
    # Seconds of the last propose() spent catching up on tokens the proposer had not seen (a
    # draft model's prefill of a prompt), for proposers that time it; None: not timed (the
    # controller then fits it from the whole proposal time).
    catchup_time_s: float | None = None

    def add_catchup_time(self, start_s: float) -> None:
        """Count the time since start_s (time.perf_counter) as catch-up, for proposers that
        time it (they set catchup_time_s to 0 at the start of each propose)."""
        self.catchup_time_s = (self.catchup_time_s or 0.0) + time.perf_counter() - start_s

    @abstractmethod
    def propose(self, requests: list[ProposalRequest]) -> dict[str, Proposal]:
        """Proposals per request id; a request may be missing or get fewer tokens than asked
        (nothing worth proposing). Never more than max_num_tokens."""

    def forget(self, request_ids: Iterable[str], finished: bool) -> None:
        """Drop per-request state: the requests finished (finished=True; their outputs may feed
        later proposals) or were preempted (finished=False; they come back later)."""


PROPOSERS: Registry[Proposer] = Registry("speculative method")
