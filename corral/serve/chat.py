"""POST /v1/chat/completions: the model's own chat template (or a default), streaming deltas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from corral.engine.async_llm import RequestStream
from corral.engine.rag_prompt import tokenize_with_chunks
from corral.engine.tokenizer import Tokenizer
from corral.outputs import CompletionOutput
from corral.serve.chat_output import ChoiceStream, finish_reason, merge_deltas, parse_choice
from corral.serve.errors import bad_request
from corral.serve.logprobs import chat_logprobs
from corral.serve.migration import MigrationWatch, is_migratable, num_resumed_tokens
from corral.serve.protocol import ChatCompletionRequest, ChatMessage
from corral.serve.responses import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    ChatStreamChoice,
    DeltaMessage,
    PromptTokensDetails,
    UsageInfo,
    consensus_out,
)
from corral.serve.state import ServerState
from corral.serve.streaming import (
    collect_final,
    event_stream,
    json_response,
    merge_streams,
    run_until_disconnected,
    sse,
)
from corral.serve.structured import (
    OutputSetup,
    output_setup,
    reasoning_params,
    tool_schema_checks,
)
from corral.serve.tracing import trace_headers
from corral.serve.validation import chat_params, with_output_constraint

_THREAD_TEMPLATE_CHARS = 16384


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as the template expects them: role and text content (text parts joined)."""
    result = []
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise bad_request(
                        f"messages[{index}]: content part type {part.type!r} is not supported "
                        f"(only 'text')",
                        "messages",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls:
            entry["tool_calls"] = message.tool_calls
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        result.append(entry)
    return result


def render_chat(
    tokenizer: Tokenizer,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    rag_chunks: list[str] | None = None,
) -> list[int]:
    """Template and tokenize (with the tools, for templates that render them; piecewise at
    the retrieved chunks, if any); a template that refuses the conversation gives a 400."""
    kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    if continue_final_message:
        if add_generation_prompt:
            raise bad_request(
                "continue_final_message needs add_generation_prompt set to false",
                "continue_final_message",
            )
        kwargs["continue_final_message"] = True
    try:
        if not rag_chunks:
            return tokenizer.encode_chat(messages, **kwargs)
        text = tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as error:  # jinja raises many types, raise_exception() among them
        raise bad_request(f"the chat template refused the messages: {error}", "messages") from None
    return tokenize_with_chunks(tokenizer, text, list(rag_chunks), add_special_tokens=False)


async def create_chat_completion(
    state: ServerState, req: ChatCompletionRequest, raw: Request, client_id: str | None
) -> Response:
    adapter = state.select_model(req.model)
    params = chat_params(req, state.limits)
    tool_parser = state.tool_parser
    setup = output_setup(req, tool_parser.call_format if tool_parser is not None else None)
    reasoning = reasoning_params(
        state.reasoning_parser,
        lambda text: state.engine.tokenizer.encode(text, add_special_tokens=False),
        req.max_reasoning_tokens,
        setup.constraint is not None,
    )
    params = with_output_constraint(params, setup.constraint, reasoning)
    if setup.tools_active:
        # Each parameter schema on its own, so that a 400 names the tool (off the event loop).
        for check in tool_schema_checks(req):
            await asyncio.to_thread(state.engine.input_processor.check_structured_output, check)
    messages = message_dicts(req.messages)
    tools = [tool.model_dump(exclude_none=True) for tool in req.tools or []]
    render = (
        render_chat,
        state.engine.tokenizer,
        messages,
        req.add_generation_prompt,
        req.continue_final_message,
        tools if setup.tools_active else None,
        req.rag_chunks,
    )
    if sum(len(m["content"]) for m in messages) > _THREAD_TEMPLATE_CHARS:
        token_ids = await asyncio.to_thread(*render)
    else:
        token_ids = render[0](*render[1:])
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    streams = await state.admit(
        request_id,
        [{"prompt_token_ids": token_ids}],
        params,
        priority=req.priority,
        client_id=client_id,
        cache_salt=req.cache_salt,
        deadline_s=req.deadline_s,
        session_id=req.session_id,
        session_pause_s=req.session_pause_s,
        lora_request=adapter,
        kv_transfer_params=req.kv_transfer_params,
        # Parsed output (reasoning, tool calls) keeps parser state here: it does not move.
        migratable=is_migratable(raw)
        and req.n == 1
        and not setup.tools_active
        and state.reasoning_parser is None,
        trace_headers=trace_headers(raw.headers) if state.config.otlp_traces_endpoint else None,
    )
    formatter = _ChatFormatter(state, req, request_id, setup)
    if req.stream:
        return event_stream(formatter.stream(streams[0]))
    return await run_until_disconnected(
        raw,
        collect_final(state.engine, streams),
        lambda finals: json_response(formatter.response(finals[0])),
    )


class _ChatFormatter:
    def __init__(
        self, state: ServerState, req: ChatCompletionRequest, request_id: str, setup: OutputSetup
    ) -> None:
        self.state = state
        self.req = req
        self.request_id = request_id
        self.created = int(time.time())
        self.token_text = state.token_texts
        # Echoed in every response: the LoRA adapter's name for an adapter's request.
        self.model = req.model or state.model_name
        self.reasoning_parser = state.reasoning_parser
        self.tool_parser = state.tool_parser if setup.tools_active else None

    def _logprobs(self, completion: CompletionOutput) -> ChatLogprobs | None:
        if not self.req.logprobs or completion.logprobs is None:
            return None
        num_top = self.req.top_logprobs or 0
        return chat_logprobs(completion.token_ids, completion.logprobs, num_top, self.token_text)

    def response(self, final: Any) -> ChatCompletionResponse:
        choices = []
        for completion in final.outputs:
            parsed = parse_choice(completion.text, self.reasoning_parser, self.tool_parser)
            message = ChatMessageOut(
                content=parsed.content,
                reasoning_content=parsed.reasoning_content,
                tool_calls=parsed.tool_calls,
            )
            choices.append(
                ChatChoice(
                    index=completion.index,
                    message=message,
                    logprobs=self._logprobs(completion),
                    finish_reason=finish_reason(completion.finish_reason, bool(parsed.tool_calls)),
                    stop_reason=completion.stop_reason,
                )
            )
        self.state.log_output(final.request_id, [c.text for c in final.outputs])
        num_prompt = len(final.prompt_token_ids)
        num_generated = sum(len(c.token_ids) for c in final.outputs)  # resumed ones included
        usage = UsageInfo(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=final.num_cached_tokens),
        )
        return ChatCompletionResponse(
            id=self.request_id,
            model=self.model,
            choices=choices,
            usage=usage,
            kv_transfer_params=final.kv_transfer_params,
            consensus=consensus_out(final.consensus),
        )

    async def stream(self, stream: RequestStream) -> AsyncIterator[bytes]:
        options = self.req.stream_options
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options and options.continuous_usage_stats)
        parsers: dict[int, ChoiceStream] = {}
        num_prompt = num_cached = 0
        num_generated = resumed = num_resumed_tokens(self.req.kv_transfer_params)
        moves = MigrationWatch()
        async for _, output in moves.watch(merge_streams(self.state.engine, [stream])):
            num_prompt, num_cached = len(output.prompt_token_ids), output.num_cached_tokens
            choices = []
            for completion in output.outputs:
                parser = parsers.get(completion.index)
                if parser is None:
                    parser = parsers[completion.index] = ChoiceStream(
                        self.reasoning_parser, self.tool_parser
                    )
                    if not resumed:  # a continued stream had its role chunk where it began
                        first = DeltaMessage(role="assistant", content="")
                        choice = ChatStreamChoice(index=completion.index, delta=first)
                        yield sse(self._chunk([choice]))
                num_generated += len(completion.token_ids)
                has_logprobs = bool(self.req.logprobs and completion.token_ids)
                if not completion.text and completion.finish_reason is None and not has_logprobs:
                    continue
                if parser.is_plain:
                    delta: DeltaMessage | None = DeltaMessage(content=completion.text)
                else:
                    pieces = parser.feed(completion.text)
                    if completion.finish_reason is not None:
                        pieces += parser.finish()
                    delta = merge_deltas(pieces)
                    if delta is None:
                        if not has_logprobs and completion.finish_reason is None:
                            continue
                        delta = DeltaMessage()
                choices.append(
                    ChatStreamChoice(
                        index=completion.index,
                        delta=delta,
                        logprobs=self._logprobs(completion),
                        finish_reason=finish_reason(
                            completion.finish_reason, parser.num_tool_calls > 0
                        ),
                        stop_reason=completion.stop_reason,
                    )
                )
            if choices:
                usage = self._usage(num_prompt, num_generated) if continuous else None
                yield sse(self._chunk(choices, usage))
        if moves.event is not None:  # the router continues the request elsewhere
            yield moves.event
            return
        if include_usage:
            yield sse(self._chunk([], self._usage(num_prompt, num_generated, num_cached)))

    @staticmethod
    def _usage(num_prompt: int, num_generated: int, num_cached: int | None = None) -> UsageInfo:
        """The final chunk's usage carries the cached prompt tokens, as a whole answer's does."""
        return UsageInfo(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
            prompt_tokens_details=(
                None if num_cached is None else PromptTokensDetails(cached_tokens=num_cached)
            ),
        )

    def _chunk(
        self, choices: list[ChatStreamChoice], usage: UsageInfo | None = None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )
