"""Routes of the live dashboard (`corral serve --dashboard-interval-ms`, default 500; 0: off).

- GET /dashboard: the page (static; it asks for the API key when the server has one);
- GET /dashboard/static/<name>: its script, style sheet and the vendored uPlot;
- GET /dashboard/events: server-sent events, one frame per interval while the page listens;
- GET /dashboard/state: one frame as JSON, with every step the engine still keeps (scripts,
  tests).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from corral.serve.dashboard.publisher import DashboardPublisher
from corral.serve.errors import APIError
from corral.serve.state import ServerState
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


def install_dashboard_routes(app: FastAPI, state: ServerState) -> DashboardPublisher | None:
    """Serve the dashboard page, its static files and its event stream; None (and no routes)
    when the server's dashboard_interval_ms is 0."""
    interval_ms = state.config.dashboard_interval_ms
    if interval_ms == 0:
        return None
    publisher = DashboardPublisher(state.engine, state.metrics, state.model_name, interval_ms)
    app.state.dashboard = publisher
    static = StaticFiles(STATIC_DIRECTORY)
    page = static.files["dashboard.html"][0]

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    static.install(app, "/dashboard/static")

    @app.get("/dashboard/state", include_in_schema=False)
    async def dashboard_state() -> Response:
        frame = await publisher.frame(since_step=0)
        return Response(frame_bytes(frame), media_type="application/json")

    @app.get("/dashboard/events", include_in_schema=False)
    async def dashboard_events(request: Request) -> StreamingResponse:
        if state.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")

        async def frames() -> AsyncIterator[bytes]:
            queue = publisher.subscribe()
            try:
                yield b"retry: 2000\n\n"
                while not state.draining and not await request.is_disconnected():
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

    return publisher
