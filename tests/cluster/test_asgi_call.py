"""call_asgi: one request through an ASGI app in-process, streamed (the path of every request
a corral replica serves on Ray)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from corral.cluster.asgi_call import call_asgi
from corral.cluster.ray_messages import ForwardedRequest, ResponseStart


def make_app(events: dict[str, asyncio.Event]) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        headers = {"x-seen": request.headers.get("x-test", "")}
        payload = {"body": body, "query": request.url.query, "method": request.method}
        return JSONResponse(payload, status_code=201, headers=headers)

    async def stream(request: Request) -> StreamingResponse:
        async def chunks():
            try:
                yield b"data: 1\n\n"
                await events["release"].wait()
                yield b"data: 2\n\n"
                await asyncio.sleep(30)  # until the caller leaves
                yield b"data: never\n\n"
            finally:
                events["stopped"].set()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def broken(request: Request) -> JSONResponse:
        raise KeyError("no such thing")

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/broken", broken),
        ]
    )


def test_request_and_answer_pass_through_unchanged() -> None:
    async def run() -> list[ResponseStart | bytes]:
        app = make_app({})
        request = ForwardedRequest(
            "POST", "/echo", b"a=1", (("X-Test", "yes"),), b'{"prompt": "hi"}', ("1.2.3.4", 5)
        )
        return [item async for item in call_asgi(app, request)]

    items = asyncio.run(run())
    start = items[0]
    assert isinstance(start, ResponseStart) and start.status == 201
    assert ("x-seen", "yes") in start.headers
    body = b"".join(item for item in items[1:] if isinstance(item, bytes))
    assert body == b'{"body":{"prompt":"hi"},"query":"a=1","method":"POST"}'


def test_chunks_stream_before_the_app_finishes_and_leaving_stops_it() -> None:
    async def run() -> None:
        events = {"release": asyncio.Event(), "stopped": asyncio.Event()}
        answer = call_asgi(make_app(events), ForwardedRequest("GET", "/stream"))
        start = await answer.__anext__()
        assert isinstance(start, ResponseStart) and start.status == 200
        assert await answer.__anext__() == b"data: 1\n\n"  # while the app still waits
        events["release"].set()
        assert await answer.__anext__() == b"data: 2\n\n"
        await answer.aclose()  # the caller leaves mid-stream: the app sees the disconnect
        await asyncio.wait_for(events["stopped"].wait(), 10)

    asyncio.run(run())


def test_an_app_failing_answers_500_and_one_without_an_answer_raises() -> None:
    async def run(app) -> list[ResponseStart | bytes]:  # noqa: ANN001
        return [item async for item in call_asgi(app, ForwardedRequest("GET", "/broken"))]

    items = asyncio.run(run(make_app({})))  # Starlette answers 500 before re-raising
    assert isinstance(items[0], ResponseStart) and items[0].status == 500

    async def silent(scope, receive, send) -> None:  # noqa: ANN001
        raise KeyError("no such thing")

    with pytest.raises(KeyError, match="no such thing"):
        asyncio.run(run(silent))
