"""DashboardPublisher: one task, alive only while a dashboard page (or /dashboard/state reader)
listens, that every interval asks the engine core for its snapshot (a utility call, answered
between steps), brings the server's metrics registry up to date with it, reads the registry, and
hands the same frame to every listener. Nothing runs on the step path but one append per step
(corral/core/step_timeline.py); with no page open, nothing runs at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from corral.engine.async_llm import AsyncLLM
from corral.serve.dashboard.readings import Windows, read_registry
from corral.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)

# Windows the page's rates and percentiles are computed over (seconds).
SUMMARY_WINDOWS_S = (10.0, 60.0)
# How many frames a slow listener may fall behind before it misses frames.
MAX_QUEUED_FRAMES = 4
UTILITY_TIMEOUT_S = 5.0


class DashboardPublisher:
    """Frames of the dashboard, published every interval_ms while anyone listens."""

    def __init__(
        self, engine: AsyncLLM, metrics: ServerMetrics, model_name: str, interval_ms: int
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model_name = model_name
        self.interval_s = interval_ms / 1000
        self.windows = Windows()
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_step = 0
        self._lock = asyncio.Lock()
        self.num_frames = 0

    async def frame(self, since_step: int | None = None) -> dict[str, Any]:
        """One frame now: the core's snapshot (requests, KV map, steps, SLO) with the metrics
        registry's readings and their windows. The steps are those after since_step; None: those
        since the last published frame (the stream's cursor, which this moves on: each step is
        published once)."""
        async with self._lock:
            engine = self.engine
            frame: dict[str, Any] = {
                "model": self.model_name,
                "healthy": engine.is_healthy,
                "interval_ms": round(self.interval_s * 1000),
            }
            core: dict[str, Any] | None = None
            if engine.is_healthy:
                with contextlib.suppress(asyncio.TimeoutError, RuntimeError):
                    core = await asyncio.wait_for(
                        engine.client.call_utility(
                            "dashboard", self._last_step if since_step is None else since_step
                        ),
                        UTILITY_TIMEOUT_S,
                    )
            now_s = time.monotonic()
            if core is not None:
                self.metrics.set_slo(core.pop("slo"))
                steps = core.get("steps", [])
                if steps and since_step is None:
                    self._last_step = int(steps[-1][0])
                frame.update(core)
            reading = read_registry(self.metrics.registry, now_s)
            self.windows.add(reading)
            frame["now_s"] = now_s
            frame["counters"] = reading.counters
            frame["gauges"] = reading.gauges
            frame["slo"] = reading.slo
            frame["windows"] = [self.windows.summary(w) for w in SUMMARY_WINDOWS_S]
            self.num_frames += 1
            return frame

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that receives every frame from now on (start the publishing task if it is
        the first)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
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
                frame = await self.frame()
            except Exception:  # a frame is never worth the server
                logger.exception("dashboard frame failed")
                frame = None
            for queue in list(self._listeners):
                if frame is None:
                    continue
                if queue.full():  # a slow page skips a frame rather than hold memory
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(frame)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
