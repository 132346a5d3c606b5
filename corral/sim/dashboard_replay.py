"""`corral simulate dashboard FRAMES`: the /dashboard page of `corral serve`, fed with the frames
a simulation recorded (`corral simulate run --dashboard-frames FRAMES`), replayed at --speed
virtual seconds per wall second. /dashboard?instance=N shows instance N; each page replays from
the start when it connects, and holds the last frame at the end (or starts over with --loop)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from corral.serve.dashboard.frame_routes import STATIC_DIRECTORY, frame_bytes, is_closing
from corral.serve.errors import APIError, install_error_handlers
from corral.serve.static_files import StaticFiles

TICK_S = 0.2


def load_frames(path: str | Path) -> dict[int, list[dict[str, Any]]]:
    """Frames by instance, each list in time order."""
    frames: dict[int, list[dict[str, Any]]] = {}
    with Path(path).open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                frame = json.loads(line)
                frames.setdefault(int(frame["instance"]), []).append(frame)
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a dashboard frame ({error})") from None
    if not frames:
        raise ValueError(f"{path} holds no dashboard frames")
    for instance_frames in frames.values():
        instance_frames.sort(key=lambda frame: frame["now_s"])
    return frames


class Replay:
    """One page's replay of one instance's frames."""

    def __init__(self, frames: list[dict[str, Any]], speed: float, loop: bool) -> None:
        self.frames = frames
        self.speed = speed
        self.loop = loop
        self.start_wall_s = time.monotonic()
        self.next_index = 0

    def advance(self) -> dict[str, Any] | None:
        """The newest frame due by now, carrying the steps of every frame it skipped (None when
        none is due)."""
        first_s, last_s = self.frames[0]["now_s"], self.frames[-1]["now_s"]
        virtual_s = first_s + (time.monotonic() - self.start_wall_s) * self.speed
        if self.loop and virtual_s > last_s + 1.0 and self.next_index >= len(self.frames):
            self.start_wall_s, self.next_index = time.monotonic(), 0
            virtual_s = first_s
        due = self.next_index
        while due < len(self.frames) and self.frames[due]["now_s"] <= virtual_s:
            due += 1
        if due == self.next_index:
            return None
        steps = [s for frame in self.frames[self.next_index : due] for s in frame["steps"]]
        frame = dict(self.frames[due - 1], steps=steps, time_scale=1 / self.speed)
        self.next_index = due
        return frame


def build_replay_app(frames: dict[int, list[dict[str, Any]]], speed: float, loop: bool) -> FastAPI:
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    app = FastAPI(title="corral simulate dashboard")
    install_error_handlers(app)
    static = StaticFiles(STATIC_DIRECTORY)
    page = static.files["dashboard.html"][0]
    instances = sorted(frames)

    def instance_frames(instance: int) -> list[dict[str, Any]]:
        if instance not in frames:
            raise APIError(
                404, f"no instance {instance}; the frames hold instances {instances}",
                param="instance",
            )  # fmt: skip
        return frames[instance]

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    static.install(app, "/dashboard/static")

    @app.get("/dashboard/state", include_in_schema=False)
    async def dashboard_state(instance: int = instances[0]) -> Response:
        last = dict(instance_frames(instance)[-1], instances=instances)
        return Response(frame_bytes(last), media_type="application/json")

    @app.get("/dashboard/events", include_in_schema=False)
    async def dashboard_events(request: Request, instance: int = instances[0]) -> StreamingResponse:
        replay = Replay(instance_frames(instance), speed, loop)

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while not is_closing(app) and not await request.is_disconnected():
                frame = replay.advance()
                if frame is not None:
                    frame["instances"] = instances
                    frame["interval_ms"] = round(TICK_S * 1000)
                    yield b"data: " + frame_bytes(frame) + b"\n\n"
                await asyncio.sleep(TICK_S)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


def serve_replay(path: str, speed: float, loop: bool, host: str, port: int) -> int:
    import uvicorn

    from corral.serve.server import ClosingServer, run_until_drained

    app = build_replay_app(load_frames(path), speed, loop)
    print(f"replaying {path} at http://{host}:{port}/dashboard (x{speed})")
    server = ClosingServer(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    return 0 if run_until_drained(server) else 1
