"""The dashboard's routes, whoever makes the frames (`corral serve`'s engine frames,
corral/serve/dashboard/routes.py; `corral router`'s, corral/cluster/router_dashboard.py); no
torch, no engine.

- GET /dashboard: the page (static; it asks for the API key when the server has one);
- GET /dashboard/static/<name>: its scripts, style sheet and the vendored uPlot;
- GET /dashboard/events: server-sent events, one frame per interval while the page listens;
- GET /dashboard/state: one frame as JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from corral.serve.dashboard.publisher import FramePublisher
from corral.serve.errors import APIError
from corral.serve.static_files import StaticFiles

STATIC_DIRECTORY = Path(__file__).parent / "static"
# A comment line keeps idle proxies from closing a stream that waits for frames.
KEEPALIVE_S = 15.0


def finite(value: Any) -> Any:
    """value with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def frame_bytes(frame: dict[str, Any]) -> bytes:
    return json.dumps(finite(frame), separators=(",", ":")).encode()


def is_closing(app: Any) -> bool:
    """Set by the server on SIGTERM / Ctrl-C (corral/serve/server.py): open event streams end
    so that the graceful shutdown is not held up by a page."""
    return bool(getattr(app.state, "closing", False))


def install_frame_routes(
    app: FastAPI,
    publisher: FramePublisher,
    state_frame: Callable[[], Awaitable[dict[str, Any]]],
    page_name: str,
) -> None:
    """GET /dashboard (the page page_name of the static directory), /dashboard/static/<name>,
    /dashboard/state (state_frame() as JSON) and /dashboard/events (the publisher's frames)."""
    static = StaticFiles(STATIC_DIRECTORY)
    page = static.files[page_name][0]

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    static.install(app, "/dashboard/static")

    @app.get("/dashboard/state", include_in_schema=False)
    async def dashboard_state() -> Response:
        frame = await state_frame()
        frame["interval_ms"] = round(publisher.interval_s * 1000)
        return Response(frame_bytes(frame), media_type="application/json")

    @app.get("/dashboard/events", include_in_schema=False)
    async def dashboard_events(request: Request) -> StreamingResponse:
        if is_closing(app):
            raise APIError(503, "the server is shutting down", code="shutting_down")

        async def frames() -> AsyncIterator[bytes]:
            queue = publisher.subscribe()
            try:
                yield b"retry: 2000\n\n"
                while not is_closing(app) and not await request.is_disconnected():
                    try:
                        frame = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"data: " + frame_bytes(frame) + b"\n\n"
            finally:
                publisher.unsubscribe(queue)

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
