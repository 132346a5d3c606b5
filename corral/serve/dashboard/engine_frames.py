"""EngineFrames: the frames of `corral serve`'s dashboard. Each asks the engine core for its
snapshot (a utility call, answered between steps: requests, KV map, the steps since the last
frame, SLO stats), brings the server's metrics registry up to date with it, and reads the
registry (the numbers /metrics exports). Nothing runs on the step path but one append per step
(corral/core/step_timeline.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from corral.engine.async_llm import AsyncLLM
from corral.serve.dashboard.readings import Windows, read_registry
from corral.serve.metrics import ServerMetrics

# Windows the page's rates and percentiles are computed over (seconds).
SUMMARY_WINDOWS_S = (10.0, 60.0)
UTILITY_TIMEOUT_S = 5.0


class EngineFrames:
    def __init__(self, engine: AsyncLLM, metrics: ServerMetrics, model_name: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model_name = model_name
        self.windows = Windows()
        self._last_step = 0
        self._lock = asyncio.Lock()

    async def frame(self, since_step: int | None = None) -> dict[str, Any]:
        """One frame now: the core's snapshot with the registry's readings and their windows.
        The steps are those after since_step; None: those since the last published frame (the
        stream's cursor, which this moves on: each step is published once)."""
        async with self._lock:
            engine = self.engine
            frame: dict[str, Any] = {
                "kind": "engine",
                "model": self.model_name,
                "healthy": engine.is_healthy,
            }
            core: dict[str, Any] | None = None
            if engine.is_healthy:
                cursor = self._last_step if since_step is None else since_step
                with contextlib.suppress(asyncio.TimeoutError, RuntimeError):
                    core = await asyncio.wait_for(
                        engine.client.call_utility("dashboard", cursor), UTILITY_TIMEOUT_S
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
            return frame
