"""What the engine returns to users: RequestOutput with one CompletionOutput per sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Logprob(NamedTuple):
    """A token's log-probability under the model's raw distribution, its rank (1 = most likely)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


# One position's logprobs: token id -> Logprob (the sampled or prompt token, plus the top N).
PositionLogprobs = dict[int, Logprob]


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # A prefill engine's lease for a decode engine (disaggregation), on the final output.
    kv_transfer_params: dict[str, Any] | None = None
    # Self-consistency (stop_when_agreed or answer_pattern): the samples' vote, on the final
    # output (corral.engine.consensus.Consensus).
    consensus: Any = None
