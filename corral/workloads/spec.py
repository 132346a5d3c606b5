"""RequestSpec and Workload: what a load generator or the simulator sends, and when."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from corral.workloads.tokens import synthetic_token_ids


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload.

    arrival_time_s is seconds after the workload's start (the first request arrives at 0 unless
    the trace says otherwise). The output length is forced: send max_tokens=num_output_tokens
    with ignore_eos=True. A request with parent_request_id (a later turn of a conversation) is
    issued think_time_s after its parent finished; its arrival_time_s is only the open-loop plan.
    """

    request_id: str
    arrival_time_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    # Prompt text, when the dataset has text (gsm8k, shared-prefix, multi-turn, jsonl).
    prompt: str | None = None
    # Explicit prompt token ids; None means synthetic ids derived from token_seed (see token_ids).
    prompt_token_ids: tuple[int, ...] | None = None
    token_seed: int = 0
    client_id: str | None = None
    priority: int = 0
    conversation_id: str | None = None
    turn_index: int = 0
    parent_request_id: str | None = None
    think_time_s: float = 0.0
    # This turn's new user text alone (multi-turn), for clients that rebuild the chat history.
    new_prompt: str | None = None
    # The request's n: samples generated from the one prompt, each of num_output_tokens.
    samples_per_request: int = 1
    # Retrieved chunks, (first position, num_tokens) in prompt_token_ids (the rag dataset).
    rag_chunk_spans: tuple[tuple[int, int], ...] | None = None

    @property
    def num_sampled_output_tokens(self) -> int:
        """Output tokens over all its samples (num_output_tokens each)."""
        return self.num_output_tokens * self.samples_per_request


@dataclass(slots=True)
class Workload:
    """An ordered list of RequestSpecs plus how to turn a spec into prompt token ids.

    vocab_size bounds every token id (synthetic ids are drawn from [1, vocab_size)); give the
    model's vocabulary size when the ids go to a real model.
    """

    name: str
    specs: list[RequestSpec]
    vocab_size: int = 32000
    description: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.specs.sort(key=lambda spec: spec.arrival_time_s)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[RequestSpec]:
        return iter(self.specs)

    def token_ids(self, spec: RequestSpec) -> list[int]:
        """The prompt token ids of a spec: its explicit ids, or deterministic synthetic ones."""
        if spec.prompt_token_ids is not None:
            return list(spec.prompt_token_ids)
        return synthetic_token_ids(spec.token_seed, spec.num_prompt_tokens, self.vocab_size)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(spec.num_prompt_tokens for spec in self.specs)

    def next_pauses_s(self) -> dict[str, float]:
        """A turn's request id -> the pause before its conversation's next turn (turns that have
        one); a client that knows its tools' latency can announce it (session_pause_s)."""
        return {s.parent_request_id: s.think_time_s for s in self.specs if s.parent_request_id}

    @property
    def num_output_tokens(self) -> int:
        """Output tokens over every sample of every request."""
        return sum(spec.num_sampled_output_tokens for spec in self.specs)

    @property
    def num_samples(self) -> int:
        return sum(spec.samples_per_request for spec in self.specs)

    @property
    def duration_s(self) -> float:
        """Span of the planned arrivals (0 for all-at-once)."""
        if not self.specs:
            return 0.0
        return self.specs[-1].arrival_time_s - self.specs[0].arrival_time_s


def check_lengths(specs: Sequence[RequestSpec], max_model_len: int | None) -> None:
    """Raise ValueError naming the first spec whose prompt + output exceeds max_model_len."""
    for spec in specs:
        if spec.num_prompt_tokens < 1 or spec.num_output_tokens < 1:
            raise ValueError(
                f"request {spec.request_id!r} has {spec.num_prompt_tokens} prompt and "
                f"{spec.num_output_tokens} output tokens; both must be >= 1"
            )
        total = spec.num_prompt_tokens + spec.num_output_tokens
        if max_model_len is not None and total > max_model_len:
            raise ValueError(
                f"request {spec.request_id!r} needs {total} tokens, more than max_model_len "
                f"{max_model_len}; scale or cap the lengths (--length-scale, --max-request-len)"
            )
