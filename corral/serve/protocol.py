"""The OpenAI-compatible request bodies (pydantic): they validate every request and make the
request schemas of /openapi.json, so the documented bounds are the enforced ones.

Requests refuse unknown fields, NaN and infinity, and take JSON types strictly (no "0.5" for a
number, no true for 1). Static bounds are corral.serve.constraints rules on the fields; limits that
depend on the served model (vocabulary size, context length) or on the server's flags (queue
bound) are checked per request in corral.serve.validation and the engine, and the fields'
descriptions say so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag

from corral.sampling_params import MAX_LOGPROBS
from corral.serve.constraints import (
    by_json_type,
    digit_keys,
    in_range,
    max_chars,
    max_items,
    not_empty,
)
from corral.serve.structured_protocol import (
    GuidedFields,
    MaxReasoningTokens,
    ResponseFormat,
    ToolChoice,
    Tools,
)

MAX_N = 128
MAX_STOP_STRINGS = 32
MAX_PROMPTS_PER_REQUEST = 256
MAX_CACHE_SALT_CHARS = 256
MAX_SESSION_ID_CHARS = 256
MAX_ANSWER_PATTERN_CHARS = 512  # corral.engine.consensus.MAX_ANSWER_PATTERN_CHARS
MAX_DEADLINE_S = 7 * 24 * 3600.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_IN_VOCAB = "token ids must be in [0, the model's vocabulary size) (checked per request)"
_FITS_CONTEXT = (
    "prompt tokens + max_tokens must fit the model's context length (max_model_len in "
    "GET /v1/models; checked per request)"
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


def _text_or_list_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    return "list[str]" if isinstance(value, list) else None


StopString = Annotated[str, not_empty("is empty; stop strings must not be empty", text=True)]
Stop = Annotated[
    Annotated[StopString, Tag("str")]
    | Annotated[list[StopString], max_items(MAX_STOP_STRINGS, "strings"), Tag("list[str]")],
    by_json_type(_text_or_list_tag, "stop_type", "must be a string or a list of strings"),
]
LogitBias = Annotated[dict[str, Annotated[float, in_range(-100.0, 100.0)]], digit_keys("token ids")]
MaxTokens = Annotated[int, in_range(1), Field(description=_FITS_CONTEXT)]
NumLogprobs = Annotated[int, in_range(0, MAX_LOGPROBS)]


class _SamplingFields(_Request, GuidedFields):
    """Fields shared by completions and chat: OpenAI's, then the common extras (the guided_*
    structured output fields come from GuidedFields)."""

    model: str | None = Field(
        None,
        description="the served model's id or a loaded LoRA adapter's (GET /v1/models lists "
        "them); others get 404",
    )
    n: Annotated[int, in_range(1, MAX_N)] = Field(
        1, description="also at most the server's --max-queued-requests, when set"
    )
    stop_when_agreed: Annotated[int, in_range(2, MAX_N)] | None = Field(
        None,
        description="self-consistency: stop the samples still running once this many finished "
        "ones agree on their answer (at most n); the response's consensus holds the vote",
    )
    answer_pattern: Annotated[str, max_chars(MAX_ANSWER_PATTERN_CHARS)] | None = Field(
        None,
        description="a regex whose last match (its group, if it has one) is a sample's answer; "
        "default: the last number",
    )
    temperature: Annotated[float, in_range(0.0, 2.0)] | None = None
    top_p: Annotated[float, in_range(0.0, 1.0, low_open=True)] | None = None
    stop: Stop | None = None
    seed: Annotated[int, in_range(INT64_MIN, INT64_MAX)] | None = None
    presence_penalty: Annotated[float, in_range(-2.0, 2.0)] | None = None
    frequency_penalty: Annotated[float, in_range(-2.0, 2.0)] | None = None
    logit_bias: LogitBias | None = Field(None, description=_IN_VOCAB)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extras (vLLM's names).
    top_k: Annotated[int, in_range(-1)] | None = Field(
        None, description="-1 or 0: off; else at most the model's vocabulary size (per request)"
    )
    min_p: Annotated[float, in_range(0.0, 1.0)] | None = None
    repetition_penalty: Annotated[float, in_range(0.0, 2.0, low_open=True)] | None = None
    min_tokens: Annotated[int, in_range(0)] = Field(
        0, description="at most max_tokens and the model's context length (per request)"
    )
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = Field(None, description=_IN_VOCAB)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: Annotated[int, in_range(INT64_MIN, INT64_MAX)] = 0
    cache_salt: Annotated[str, max_chars(MAX_CACHE_SALT_CHARS)] | None = None
    session_id: Annotated[str, max_chars(MAX_SESSION_ID_CHARS)] | None = Field(
        None,
        description="the conversation this request is a turn of: with --session-kv-ttl-s its KV "
        "stays on the device for the next turn (n == 1 only)",
    )
    session_pause_s: Annotated[float, in_range(0.0, 86400.0)] | None = Field(
        None,
        description="with session_id: the pause expected before the session's next turn (the "
        "tool's typical latency); pins expected back sooner are kept longer under pressure",
    )
    deadline_s: Annotated[float, in_range(0.0, MAX_DEADLINE_S, low_open=True)] | None = Field(
        None, description="seconds after arrival by which the request should finish (edf policy)"
    )
    rag_chunks: (
        Annotated[
            list[
                Annotated[str, not_empty("is empty", text=True)]
                | Annotated[list[int], not_empty("is empty")]
            ],
            max_items(64, "chunks"),
        ]
        | None
    ) = Field(
        None,
        description="retrieved chunks, each a substring of the (templated) prompt, or with a "
        "token-id prompt each a run of its ids: with --rag-chunk-reuse their KV is reused at any "
        "position (docs/rag.md); a chunk the prompt does not contain gets 400",
    )
    kv_transfer_params: dict[str, Any] | None = Field(
        None,
        description="disaggregation: {'do_remote_decode': true} to a --kv-role prefill engine; "
        "its answer's kv_transfer_params to a decode engine (docs/disaggregation.md)",
    )


def _prompt_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    if isinstance(first, str):
        return "list[str]"
    return "list[list[int]]" if isinstance(first, list) else "list[int]"


TokenIds = Annotated[list[int], not_empty(), Field(description=_IN_VOCAB)]
Prompt = Annotated[
    Annotated[str, Tag("str")]
    | Annotated[
        list[str], not_empty(), max_items(MAX_PROMPTS_PER_REQUEST, "prompts"), Tag("list[str]")
    ]
    | Annotated[TokenIds, Tag("list[int]")]
    | Annotated[
        list[TokenIds],
        not_empty(),
        max_items(MAX_PROMPTS_PER_REQUEST, "prompts"),
        Tag("list[list[int]]"),
    ],
    by_json_type(
        _prompt_tag,
        "prompt_type",
        "must be a string, a list of strings, a list of token ids or a list of token-id lists",
    ),
]


class CompletionRequest(_SamplingFields):
    prompt: Prompt = Field(
        description=f"{MAX_PROMPTS_PER_REQUEST} completions per request at most (prompts x n); "
        + _FITS_CONTEXT
    )
    suffix: str | None = Field(None, description="not supported: any value gets 400")
    max_tokens: MaxTokens | None = 16
    logprobs: NumLogprobs | None = None
    echo: bool = False
    best_of: Annotated[int, in_range(1, MAX_N)] | None = Field(
        None, description="only supported equal to n"
    )
    prompt_logprobs: NumLogprobs | None = None
    response_format: ResponseFormat | None = None


class TextPart(_Request):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="only 'text' is supported")
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # An assistant's earlier calls (OpenAI shape) and a tool result's call id.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


Messages = Annotated[list[ChatMessage], not_empty("must hold at least one message")]


class ChatCompletionRequest(_SamplingFields):
    messages: Messages = Field(description=_FITS_CONTEXT)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: NumLogprobs | None = Field(None, description="needs logprobs: true")
    tools: Tools | None = Field(None, description="functions the model may call")
    tool_choice: ToolChoice | None = Field(
        None,
        description="none, auto (the default with tools: the model decides, the server's "
        "--tool-call-parser finds calls), required or a named function (forced by a grammar)",
    )
    parallel_tool_calls: bool | None = Field(None, description="default true")
    max_reasoning_tokens: MaxReasoningTokens | None = Field(
        None,
        description="close the reasoning block after this many tokens (needs the server's "
        "--reasoning-parser)",
    )
    response_format: ResponseFormat | None = None
    # Accepted and ignored: they change nothing here.
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    # Extras.
    add_generation_prompt: bool = True
    continue_final_message: bool = Field(False, description="needs add_generation_prompt: false")


class TokenizeRequest(_Request):
    """Exactly one of prompt and messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(description=_IN_VOCAB)
