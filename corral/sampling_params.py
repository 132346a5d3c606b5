"""SamplingParams: how one request's tokens are chosen and when it stops (vLLM-compatible names)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from corral.structured.params import ReasoningParams, StructuredOutputParams

MAX_LOGPROBS = 20


class OutputKind(enum.Enum):
    """What each streamed RequestOutput holds."""

    CUMULATIVE = "cumulative"  # everything so far
    DELTA = "delta"  # only what is new since the last output
    FINAL_ONLY = "final_only"  # one output, when the request finishes


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(slots=True)
class SamplingParams:
    """Sampling and stopping parameters of one request.

    temperature 0 means greedy. top_k 0 or -1 disables top-k. max_tokens None means up to the
    context length. logprobs N returns the sampled token's logprob plus the top N (0: sampled only).
    A seed makes the request's samples depend on nothing but the seed and the position.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    # False: return token ids only (text stays empty; stop strings are then refused).
    detokenize: bool = True
    output_kind: OutputKind = OutputKind.CUMULATIVE
    # The output's shape: a JSON schema, a regex, a grammar... (corral/structured/params.py).
    structured_output: StructuredOutputParams | None = None
    # A reasoning model's thinking block: where it ends, and its token budget.
    reasoning: ReasoningParams | None = None
    # Self-consistency (n > 1): stop the samples still running once this many finished ones
    # agree on their answer, found by answer_pattern (default: the last number); see
    # corral/engine/consensus.py.
    stop_when_agreed: int | None = None
    answer_pattern: str | None = None
    # Retrieved chunks of the prompt (texts, or token id lists), whose KV may be reused at any
    # position with --rag-chunk-reuse (docs/rag.md); each must occur in the prompt.
    rag_chunks: list[str | list[int]] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be -1 (disabled), 0 (disabled) or >= 1, got {self.top_k}")
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {value}")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize=True")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative ints, got {self.stop_token_ids}")
        if self.structured_output is not None:
            if self.ignore_eos:
                raise ValueError(
                    "ignore_eos cannot be combined with structured output: a finished grammar "
                    "allows only the end-of-sequence token"
                )
            if self.min_tokens:
                raise ValueError(
                    f"min_tokens ({self.min_tokens}) cannot be combined with structured output: "
                    "the grammar decides where the output ends"
                )
        if self.stop_when_agreed is not None:
            if self.n < 2 or not 2 <= self.stop_when_agreed <= self.n:
                raise ValueError(
                    f"stop_when_agreed must be in [2, n] with n >= 2, got {self.stop_when_agreed} "
                    f"with n = {self.n}"
                )
            if not self.detokenize:
                raise ValueError("stop_when_agreed reads the samples' text: it needs detokenize")
        if self.answer_pattern is not None:
            from corral.engine.consensus import compile_answer_pattern

            compile_answer_pattern(self.answer_pattern)
        if self.rag_chunks is not None and any(
            not chunk or not isinstance(chunk, (str, list)) for chunk in self.rag_chunks
        ):
            raise ValueError(
                f"rag_chunks must be non-empty strings or token id lists: {self.rag_chunks!r}"
            )
        if self.logit_bias:
            for token_id, bias in self.logit_bias.items():
                if not -100 <= bias <= 100:
                    raise ValueError(
                        f"logit_bias for token {token_id} must be in [-100, 100], got {bias}"
                    )

    def clone(self, **changes: object) -> SamplingParams:
        """A copy with some fields replaced (validated again)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(changes)
        return SamplingParams(**values)  # type: ignore[arg-type]
