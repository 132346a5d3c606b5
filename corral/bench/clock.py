"""The benchmark's clock: one monotonic time source and a sleep on it, injectable in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (any origin)."""

    async def sleep(self, delay_s: float) -> None:
        """Wait delay_s seconds on this clock (0 or less: just yield)."""


class MonotonicClock:
    """time.perf_counter and asyncio.sleep."""

    def now(self) -> float:
        return time.perf_counter()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))
