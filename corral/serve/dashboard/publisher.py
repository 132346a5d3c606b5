"""FramePublisher: one task, alive only while a dashboard page listens, that every interval
makes a frame (an async callable: the engine's, corral/serve/dashboard/engine_frames.py, or the
router's, corral/cluster/router_dashboard.py) and hands the same frame to every listener. With
no page open, nothing runs at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

# How many frames a slow listener may fall behind before it misses frames.
MAX_QUEUED_FRAMES = 4

Frame = dict[str, Any]


class FramePublisher:
    """Frames made by make_frame, published every interval_ms while anyone listens."""

    def __init__(self, make_frame: Callable[[], Awaitable[Frame]], interval_ms: int) -> None:
        self.make_frame = make_frame
        self.interval_s = interval_ms / 1000
        self._listeners: set[asyncio.Queue[Frame]] = set()
        self._task: asyncio.Task[None] | None = None
        self.num_frames = 0

    def subscribe(self) -> asyncio.Queue[Frame]:
        """A queue that receives every frame from now on (starts the publishing task if it
        is the first)."""
        queue: asyncio.Queue[Frame] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Frame]) -> None:
        self._listeners.discard(queue)

    async def close(self) -> None:
        self._listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._listeners:
            started = time.monotonic()
            try:
                frame = await self.make_frame()
                frame["interval_ms"] = round(self.interval_s * 1000)
                self.num_frames += 1
            except Exception:  # a frame is never worth the server
                logger.exception("dashboard frame failed")
                frame = None
            for queue in list(self._listeners) if frame is not None else []:
                if queue.full():  # a slow page skips a frame rather than hold memory
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(frame)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
