"""RequestStream: one request's outputs as an async iterator, fed by AsyncLLM's output loop."""

from __future__ import annotations

import asyncio

from corral.outputs import CompletionOutput, RequestOutput
from corral.sampling_params import OutputKind


class RequestStream:
    """One request's outputs, as an async iterator. When the consumer falls behind, DELTA outputs
    are merged and CUMULATIVE ones replaced, so a slow client never makes a backlog."""

    def __init__(self, request_id: str, output_kind: OutputKind) -> None:
        self.request_id = request_id
        self.output_kind = output_kind
        self.finished = False
        self._pending: RequestOutput | None = None
        self._error: Exception | None = None
        self._ready = asyncio.Event()

    def put(self, output: RequestOutput) -> None:
        if self._pending is not None and self.output_kind == OutputKind.DELTA:
            merge_delta(self._pending, output)
        else:
            self._pending = output
        self._ready.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._ready.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        while self._pending is None and self._error is None:
            self._ready.clear()
            await self._ready.wait()
        output, self._pending = self._pending, None
        if output is None:
            self.finished = True
            raise self._error  # type: ignore[misc]
        self.finished = output.finished
        return output


def merge_delta(into: RequestOutput, new: RequestOutput) -> None:
    """Append a later delta output to an unsent one (same request)."""
    by_index: dict[int, CompletionOutput] = {c.index: c for c in into.outputs}
    for completion in new.outputs:
        old = by_index.get(completion.index)
        if old is None:
            into.outputs.append(completion)
            continue
        old.text += completion.text
        old.token_ids.extend(completion.token_ids)
        if old.logprobs is not None and completion.logprobs is not None:
            old.logprobs.extend(completion.logprobs)
        old.cumulative_logprob = completion.cumulative_logprob
        old.finish_reason, old.stop_reason = completion.finish_reason, completion.stop_reason
    into.outputs.sort(key=lambda c: c.index)
    into.finished = new.finished
    into.prompt_logprobs = new.prompt_logprobs or into.prompt_logprobs
    into.kv_transfer_params = new.kv_transfer_params or into.kv_transfer_params
    into.metrics.update(new.metrics)
