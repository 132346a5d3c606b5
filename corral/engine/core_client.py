"""The typed interface between the frontend (AsyncLLM) and an EngineCore, and its in-process
implementation (tests, notebooks); the server's, with the core in a process of its own, is in
core_process.py. The messages themselves are in core_messages.py.

Requests and aborts go in without waiting; batches of RequestUpdates, with the scheduler's stats,
come out. Neither side ever waits on the other: sends are queued, and the frontend reads outputs
with `await get_outputs()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any

from corral.config import EngineConfig
from corral.engine.core_loop import CoreLoop
from corral.engine.core_messages import (
    AddRequests,
    CoreFailed,
    CoreInfo,
    CoreInput,
    CoreOutput,
    EngineCoreOutputs,
    FinishRequests,
    Shutdown,
    UtilityCall,
    UtilityResult,
)
from corral.request import Request, RequestStatus

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine core died or stalled; every request in flight fails with this."""


# ----- the interface ---------------------------------------------------------------------------


class EngineCoreClient(ABC):
    """How the frontend talks to one EngineCore. Sends never block; outputs are awaited."""

    def __init__(self) -> None:
        self.info: CoreInfo | None = None
        self.dead_reason: str | None = None
        self._call_ids = itertools.count()
        self._calls: dict[int, asyncio.Future[Any]] = {}

    @abstractmethod
    async def start(self) -> CoreInfo:
        """Start the core and wait until it has loaded the model. Raises RuntimeError if it
        cannot start."""

    @abstractmethod
    def send(self, message: CoreInput) -> None:
        """Queue a message for the core; returns at once."""

    @abstractmethod
    async def _next_message(self) -> EngineCoreOutputs | UtilityResult | CoreFailed:
        """The next message from the core."""

    @abstractmethod
    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the core (it drops whatever it still runs) and release its resources."""

    @property
    def is_alive(self) -> bool:
        return self.dead_reason is None

    def add_requests(self, requests: list[Request]) -> None:
        """Queue validated requests (see InputProcessor.make_requests)."""
        self._check_alive()
        self.send(AddRequests(list(requests)))

    def finish_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        """Abort requests (or stop them, for a stop string); their KV blocks return at once."""
        if request_ids and self.dead_reason is None:
            self.send(FinishRequests(list(request_ids), status))

    async def call_utility(self, method: str, *args: Any) -> Any:
        """Run one of the core's utilities (e.g. "kv_state", "check_integrity") and return its
        result; raises RuntimeError with the core's message if it failed."""
        self._check_alive()
        call_id = next(self._call_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        self.send(UtilityCall(call_id, method, args))
        return await future

    async def get_outputs(self) -> EngineCoreOutputs:
        """The next batch of outputs. Raises EngineDeadError once the core is gone."""
        while True:
            message = await self._next_message()
            if isinstance(message, EngineCoreOutputs):
                return message
            if isinstance(message, UtilityResult):
                self._resolve(message)
                continue
            self._mark_dead(message.reason)
            raise EngineDeadError(message.reason)

    def _resolve(self, result: UtilityResult) -> None:
        future = self._calls.pop(result.call_id, None)
        if future is None or future.done():
            return
        if result.error is not None:
            future.set_exception(RuntimeError(result.error))
        else:
            future.set_result(result.result)

    def _mark_dead(self, reason: str, *, expected: bool = False) -> None:
        if self.dead_reason is None:
            self.dead_reason = reason
            if not expected:
                logger.error("engine core is dead: %s", reason)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineDeadError(reason))
        self._calls.clear()

    def _check_alive(self) -> None:
        if self.dead_reason is not None:
            raise EngineDeadError(self.dead_reason)


class InProcessCoreClient(EngineCoreClient):
    """The core in a thread of this process (tests, notebooks): the same CoreLoop as the core
    process, fed by a thread-safe queue; only that thread ever touches the core."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__()
        self.config = config
        self._inbox: queue.Queue[CoreInput] = queue.Queue()
        self._messages: asyncio.Queue[CoreOutput] = asyncio.Queue()
        self._thread: threading.Thread | None = None

    async def start(self) -> CoreInfo:
        core_loop = await asyncio.to_thread(CoreLoop.build, self.config)
        self.info = core_loop.info
        event_loop = asyncio.get_running_loop()

        def deliver(message: CoreOutput) -> None:
            # A closed event loop raises RuntimeError: nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                event_loop.call_soon_threadsafe(self._messages.put_nowait, message)

        def run() -> None:
            try:
                core_loop.run(
                    self._inbox, deliver, idle_interval_s=1.0, should_exit=event_loop.is_closed
                )
            except Exception as error:  # the core's state is unknown now: stop serving
                logger.exception("engine core loop failed")
                deliver(CoreFailed(f"engine core loop failed: {error!r}"))

        self._thread = threading.Thread(target=run, name="corral-core-in-process", daemon=True)
        self._thread.start()
        return self.info

    def send(self, message: CoreInput) -> None:
        self._inbox.put(message)

    async def _next_message(self) -> EngineCoreOutputs | UtilityResult | CoreFailed:
        # The loop sends only outputs and utility results here (no CoreInfo, no heartbeats).
        return await self._messages.get()  # type: ignore[return-value]

    def kill(self, reason: str = "engine core killed") -> None:
        """Stop the core as if it had died (fault injection for tests): its loop ends after the
        current step, and every request in flight fails with reason."""
        self.send(Shutdown())
        self._messages.put_nowait(CoreFailed(reason))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.send(Shutdown())
            await asyncio.to_thread(self._thread.join, timeout_s)
        if self.dead_reason is None:
            self._mark_dead("engine core shut down", expected=True)
