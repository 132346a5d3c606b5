"""OpenAI request bodies for one RequestSpec: completions (text or token ids) or chat, and the
context a later turn of a conversation builds on (its parent's prompt plus the real reply)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from corral.core.slo_target import SLO
from corral.workloads import RequestSpec, Workload

ENDPOINT_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
PROMPT_FORMATS = ("auto", "text", "ids")


# The pause a conversation's last turn announces: no next turn within any session TTL.
NO_NEXT_TURN_PAUSE_S = 86400.0


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """How specs become request bodies.

    prompt_format: auto sends a spec's text when it has some, else its token ids (completions
    only); text and ids force one. force_output_len sends ignore_eos=true with
    max_tokens=spec.num_output_tokens, so every request generates exactly that many tokens.
    A spec's client and priority go out as `user` and `priority` (when set); deadline_slo sends
    each request's `deadline_s`, the end-to-end deadline its TTFT and TPOT bounds imply (edf).
    send_session_ids sends each turn's conversation as `session_id` (corral serve pins a paused
    conversation's KV for its next turn with --session-kv-ttl-s); send_session_pauses also
    announces the pause before its next turn as `session_pause_s` (a conversation's last turn:
    NO_NEXT_TURN_PAUSE_S, no next turn within any TTL).
    send_rag_chunks sends a spec's retrieved chunks (rag_chunk_spans, the rag dataset) as
    `rag_chunks`, the token ids of each, with the prompt as token ids.
    A spec with samples_per_request > 1 goes out with n; stop_when_agreed (>= 2) and
    answer_pattern ask the server to stop a request's samples once that many finished ones
    agree on the answer (self-consistency), for specs of at least stop_when_agreed samples.
    """

    endpoint: str = "completions"
    model: str = ""
    prompt_format: str = "auto"
    temperature: float = 0.0
    force_output_len: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    deadline_slo: SLO | None = None
    send_session_ids: bool = False
    send_session_pauses: bool = False
    send_rag_chunks: bool = False
    stop_when_agreed: int | None = None
    answer_pattern: str | None = None

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINT_PATHS:
            raise ValueError(
                f"endpoint must be one of {sorted(ENDPOINT_PATHS)}, got {self.endpoint}"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}"
            )
        if self.endpoint == "chat" and self.prompt_format == "ids":
            raise ValueError("the chat endpoint takes text; token-id prompts need completions")
        if self.send_rag_chunks and (self.is_chat or self.prompt_format == "text"):
            raise ValueError(
                "--send-rag-chunks sends chunks as token ids: it needs --endpoint completions "
                "with token-id prompts (--prompt-format ids or auto)"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.stop_when_agreed is not None and self.stop_when_agreed < 2:
            raise ValueError(f"stop_when_agreed must be >= 2, got {self.stop_when_agreed}")
        if self.answer_pattern is not None and self.stop_when_agreed is None:
            raise ValueError("answer_pattern needs stop_when_agreed (--stop-when-agreed)")
        slo = self.deadline_slo
        if slo is not None and (slo.ttft_s is None or slo.tpot_s is None):
            raise ValueError(
                f"deadlines come from the SLO's ttft and tpot bounds; {slo.describe()!r} lacks one"
            )

    @property
    def path(self) -> str:
        return ENDPOINT_PATHS[self.endpoint]

    @property
    def is_chat(self) -> bool:
        return self.endpoint == "chat"


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What a request sent, so that the next turn can append the reply and its own message."""

    prompt_text: str | None = None
    messages: tuple[dict[str, str], ...] = ()

    def with_reply(self, reply: str) -> TurnContext:
        if self.messages:
            return TurnContext(None, (*self.messages, {"role": "assistant", "content": reply}))
        return TurnContext((self.prompt_text or "") + reply, ())


def check_workload(workload: Workload, options: RequestOptions) -> None:
    """ValueError when the workload cannot be sent as options ask (text needed but absent)."""
    needs_text = options.is_chat or options.prompt_format == "text"
    missing = [spec.request_id for spec in workload if spec.prompt is None]
    if needs_text and missing:
        raise ValueError(
            f"the {workload.name} workload has no prompt text (e.g. {missing[0]!r}); use "
            f"--endpoint completions with --prompt-format auto or ids (token-id prompts)"
        )
    agreed = options.stop_when_agreed
    if agreed is not None:
        few = next((spec for spec in workload if spec.samples_per_request < agreed), None)
        if few is not None:
            raise ValueError(
                f"--stop-when-agreed {agreed} needs at least {agreed} samples per request; "
                f"{few.request_id!r} has {few.samples_per_request} (--samples-per-request)"
            )


def new_turn_text(spec: RequestSpec) -> str | None:
    """The text a later turn adds after the previous reply: from the line of its new user
    message to the end of its prompt (None when the spec does not say)."""
    if spec.prompt is None or spec.new_prompt is None:
        return None
    at = spec.prompt.rfind(spec.new_prompt)
    if at < 0:
        return None
    start = spec.prompt.rfind("\n", 0, at)
    return spec.prompt[start:] if start >= 0 else None


def _completion_prompt(
    spec: RequestSpec, workload: Workload, options: RequestOptions, parent: TurnContext | None
) -> tuple[Any, TurnContext]:
    if options.prompt_format == "ids" or (options.prompt_format == "auto" and spec.prompt is None):
        return workload.token_ids(spec), TurnContext()
    text = spec.prompt or ""
    if parent is not None and parent.prompt_text is not None:
        addition = new_turn_text(spec)
        if addition is not None:
            text = parent.prompt_text + addition
    return text, TurnContext(text, ())


def _chat_messages(spec: RequestSpec, parent: TurnContext | None) -> tuple[dict[str, str], ...]:
    message = {"role": "user", "content": spec.new_prompt or spec.prompt or ""}
    if parent is not None and parent.messages:
        return (*parent.messages, message)
    return (message,)


def build_payload(
    spec: RequestSpec,
    workload: Workload,
    options: RequestOptions,
    parent: TurnContext | None,
    next_pause_s: float | None = None,
) -> tuple[dict[str, Any], TurnContext]:
    """The JSON body for spec and the context it sent. parent: the previous turn's context with
    its reply (multi-turn), or None; next_pause_s: the pause before its conversation's next turn
    (None: it is the last)."""
    body: dict[str, Any] = {
        "model": options.model,
        "max_tokens": spec.num_output_tokens,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.force_output_len:
        body["ignore_eos"] = True
    if spec.samples_per_request > 1:
        body["n"] = spec.samples_per_request
    if options.stop_when_agreed is not None:
        body["stop_when_agreed"] = options.stop_when_agreed
        if options.answer_pattern is not None:
            body["answer_pattern"] = options.answer_pattern
    if spec.client_id is not None:
        body["user"] = spec.client_id
    if spec.priority:
        body["priority"] = spec.priority
    if options.deadline_slo is not None:
        body["deadline_s"] = options.deadline_slo.deadline_s(spec.num_output_tokens)
    if options.send_session_ids and spec.conversation_id is not None:
        body["session_id"] = spec.conversation_id
        if options.send_session_pauses:
            body["session_pause_s"] = NO_NEXT_TURN_PAUSE_S if next_pause_s is None else next_pause_s
    if options.is_chat:
        messages = _chat_messages(spec, parent)
        body["messages"] = list(messages)
        context = TurnContext(None, messages)
    else:
        if options.send_rag_chunks and spec.rag_chunk_spans:
            options = replace(options, prompt_format="ids")
            ids = workload.token_ids(spec)
            spans = spec.rag_chunk_spans
            body["rag_chunks"] = [ids[first : first + count] for first, count in spans]
        body["prompt"], context = _completion_prompt(spec, workload, options, parent)
    body.update(options.extra_body)
    return body, context
