"""POST /v1/completions: prompts as text, token ids or lists of them; echo; logprobs; streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from corral.engine.async_llm import RequestStream
from corral.outputs import CompletionOutput, RequestOutput
from corral.serve.logprobs import completion_logprobs
from corral.serve.migration import MigrationWatch, is_migratable, num_resumed_tokens
from corral.serve.protocol import CompletionRequest
from corral.serve.responses import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
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
from corral.serve.structured import output_setup
from corral.serve.tracing import trace_headers
from corral.serve.validation import completion_params, completion_prompts, with_output_constraint


async def create_completion(
    state: ServerState, req: CompletionRequest, raw: Request, client_id: str | None
) -> Response:
    adapter = state.select_model(req.model)
    params = completion_params(req, state.limits)
    params = with_output_constraint(params, output_setup(req, None).constraint, None)
    prompts = completion_prompts(req, state.limits)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    streams = await state.admit(
        request_id,
        prompts,
        params,
        priority=req.priority,
        client_id=client_id,
        cache_salt=req.cache_salt,
        deadline_s=req.deadline_s,
        session_id=req.session_id,
        session_pause_s=req.session_pause_s,
        lora_request=adapter,
        kv_transfer_params=req.kv_transfer_params,
        migratable=is_migratable(raw) and req.n == 1,
        trace_headers=trace_headers(raw.headers) if state.config.otlp_traces_endpoint else None,
    )
    formatter = _Formatter(state, req, request_id)
    if req.stream:
        return event_stream(formatter.stream(streams))
    return await run_until_disconnected(
        raw,
        collect_final(state.engine, streams),
        lambda finals: json_response(formatter.response(finals)),
    )


class _Formatter:
    def __init__(self, state: ServerState, req: CompletionRequest, request_id: str) -> None:
        self.state = state
        self.req = req
        self.request_id = request_id
        self.created = int(time.time())
        self.token_text = state.token_texts
        # Echoed in every response: the LoRA adapter's name for an adapter's request.
        self.model = req.model or state.model_name

    def _prompt_text(self, output: RequestOutput) -> str:
        if output.prompt is not None:
            return output.prompt
        return self.state.engine.tokenizer.decode(output.prompt_token_ids)

    def _logprobs(
        self, output: RequestOutput, completion: CompletionOutput, echo_prompt: bool, offset: int
    ) -> CompletionLogprobs | None:
        if self.req.logprobs is None:
            return None
        token_ids: list[int] = []
        positions: list = []
        if echo_prompt:
            token_ids += output.prompt_token_ids
            prompt_positions = output.prompt_logprobs or []
            positions += list(prompt_positions) + [None] * (
                len(output.prompt_token_ids) - len(prompt_positions)
            )
        token_ids += completion.token_ids
        positions += completion.logprobs or [None] * len(completion.token_ids)
        return completion_logprobs(token_ids, positions, self.req.logprobs, self.token_text, offset)

    def response(self, finals: list[RequestOutput]) -> CompletionResponse:
        choices = []
        num_prompt = num_generated = 0
        num_generated = 0  # a continued request's outputs hold its resumed tokens too
        for prompt_index, output in enumerate(finals):
            num_prompt += len(output.prompt_token_ids)
            prefix = self._prompt_text(output) if self.req.echo else ""
            for completion in output.outputs:
                num_generated += len(completion.token_ids)
                choices.append(
                    CompletionChoice(
                        index=prompt_index * self.req.n + completion.index,
                        text=prefix + completion.text,
                        logprobs=self._logprobs(output, completion, self.req.echo, 0),
                        finish_reason=completion.finish_reason,
                        stop_reason=completion.stop_reason,
                    )
                )
            self.state.log_output(output.request_id, [c.text for c in output.outputs])
        choices.sort(key=lambda choice: choice.index)
        usage = UsageInfo(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=sum(output.num_cached_tokens for output in finals)
            ),
        )
        return CompletionResponse(
            id=self.request_id,
            model=self.model,
            choices=choices,
            usage=usage,
            kv_transfer_params=finals[0].kv_transfer_params if len(finals) == 1 else None,
            consensus=consensus_out(finals[0].consensus) if len(finals) == 1 else None,
        )

    async def stream(self, streams: list[RequestStream]) -> AsyncIterator[bytes]:
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)
        echoed: set[int] = set()
        offsets: dict[int, int] = {}
        num_prompt: dict[int, int] = {}
        num_cached: dict[int, int] = {}
        num_generated = num_resumed_tokens(self.req.kv_transfer_params)
        moves = MigrationWatch()
        async for prompt_index, output in moves.watch(merge_streams(self.state.engine, streams)):
            num_prompt[prompt_index] = len(output.prompt_token_ids)
            num_cached[prompt_index] = output.num_cached_tokens
            choices = []
            for completion in output.outputs:
                index = prompt_index * self.req.n + completion.index
                text = completion.text
                echo = self.req.echo and index not in echoed
                if echo:
                    echoed.add(index)
                    text = self._prompt_text(output) + text
                offset = offsets.get(index, 0)
                logprobs = self._logprobs(output, completion, echo, offset)
                offsets[index] = offset + len(text)
                num_generated += len(completion.token_ids)
                choices.append(
                    CompletionChoice(
                        index=index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=completion.finish_reason,
                        stop_reason=completion.stop_reason,
                    )
                )
            if choices:
                yield sse(self._chunk(choices))
        if moves.event is not None:  # the router continues the request elsewhere
            yield moves.event
            return
        if include_usage:
            prompt_tokens = sum(num_prompt.values())
            usage = UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=num_generated,
                total_tokens=prompt_tokens + num_generated,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(num_cached.values())),
            )
            yield sse(self._chunk([], usage))

    def _chunk(
        self, choices: list[CompletionChoice], usage: UsageInfo | None = None
    ) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )
