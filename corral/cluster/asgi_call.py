"""Running one HTTP request through an ASGI app in-process, the answer streamed as it is written.

A corral replica on Ray receives requests from corral's ingress as Ray calls rather than over
HTTP, and answers them with its own FastAPI app (the routes, validation and error shapes of
`corral serve`). call_asgi yields the app's ResponseStart, then each body chunk the moment the
app sends it. When the caller stops early (its client left, or the ingress was cancelled) the
app receives http.disconnect, so corral aborts the request in the engine, and is given
DISCONNECT_GRACE_S to finish before it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message

from corral.cluster.ray_messages import ForwardedRequest, ResponseStart

DISCONNECT_GRACE_S = 5.0
_END = object()  # the app returned (queue sentinel)


def http_scope(request: ForwardedRequest) -> dict[str, Any]:
    """The ASGI HTTP scope of request (header names lower-cased, as servers pass them)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method.upper(),
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query_string,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
        "client": request.client,
        "server": None,
    }


async def call_asgi(
    app: ASGIApp, request: ForwardedRequest
) -> AsyncIterator[ResponseStart | bytes]:
    """Run request through app: a ResponseStart, then the body chunks (empty ones skipped).
    An app that fails before starting its response raises here."""
    messages: asyncio.Queue[Any] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_delivered = False

    async def receive() -> Message:
        nonlocal body_delivered
        if not body_delivered:
            body_delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(http_scope(request), receive, send)
        except BaseException as error:  # handed to the reader, which raises it
            await messages.put(error)
        else:
            await messages.put(_END)

    task = asyncio.create_task(run())
    started = False
    try:
        while True:
            message = await messages.get()
            if message is _END:
                if not started:
                    raise RuntimeError("the app returned without a response")
                return
            if isinstance(message, BaseException):
                raise message
            if message["type"] == "http.response.start":
                started = True
                headers = tuple(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                )
                yield ResponseStart(message["status"], headers)
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_S)
            if not task.done():
                task.cancel()
