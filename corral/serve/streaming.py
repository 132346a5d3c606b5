"""Server-sent events, merged output streams and client-disconnect handling.

A streaming response is cancelled by Starlette when the client goes away, which closes the
engine stream and aborts the request; a non-streaming one runs under run_until_disconnected,
which does the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from corral.engine.async_llm import AsyncLLM, RequestStream
from corral.outputs import RequestOutput
from corral.serve.errors import APIError, error_for_exception

logger = logging.getLogger(__name__)

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
# Status logged for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED_STATUS = 499


def sse(payload: BaseModel | dict[str, Any]) -> bytes:
    """One server-sent event holding a JSON object."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_none=False)
    else:
        body = json.dumps(payload)
    return b"data: " + body.encode() + b"\n\n"


async def merge_streams(
    engine: AsyncLLM, streams: list[RequestStream]
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(stream index, output) from several streams as they come; aborts all if left early."""
    if len(streams) == 1:
        async for output in engine.iterate(streams[0]):
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in engine.iterate(stream):
                queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except Exception as error:
            queue.put_nowait((index, error))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            if not stream.finished:
                engine.abort(stream.request_id)


async def collect_final(engine: AsyncLLM, streams: list[RequestStream]) -> list[RequestOutput]:
    """The final output of each stream (non-streaming requests)."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for index, output in merge_streams(engine, streams):
        finals[index] = output
    results = [final for final in finals if final is not None]
    for final in results:
        for completion in final.outputs:
            if completion.finish_reason == "error":  # e.g. a grammar the vocabulary cannot meet
                raise APIError(400, f"the request cannot be completed: {completion.stop_reason}")
    return results


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnected(
    request: Request, work: Awaitable[T], on_result: Callable[[T], Response]
) -> Response:
    """Run work; if the client disconnects first, cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
    if task.cancelled():
        logger.debug("client disconnected; request aborted")
        return Response(status_code=CLIENT_CLOSED_STATUS)
    return on_result(task.result())


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code, media_type="application/json")


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """An SSE response; an error mid-stream becomes a final error event (the status is already
    sent), so a client sees it rather than a stream that stops."""

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as error:
            yield sse(error_for_exception(error).body())
        yield DONE

    return StreamingResponse(
        guarded(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
