"""The typed interface between the frontend (AsyncLLM) and an EngineCore, and its two
implementations: in the same process (tests, notebooks) and in a process of its own (the server).

Requests and aborts go in without waiting; batches of RequestUpdates, with the scheduler's stats,
come out. Neither side ever waits on the other: sends are queued, and the frontend reads outputs
with `await get_outputs()`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from corral.config import EngineConfig
from corral.core.scheduler import RequestUpdate, SchedulerStats
from corral.request import Request, RequestStatus

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine core died or stalled; every request in flight fails with this."""


# ----- messages into the core ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequests:
    requests: list[Request]


@dataclass(frozen=True, slots=True)
class FinishRequests:
    request_ids: list[str]
    status: RequestStatus = RequestStatus.FINISHED_ABORTED


@dataclass(frozen=True, slots=True)
class UtilityCall:
    """Ask the core for something outside the step loop (see CoreRunner.UTILITIES)."""

    call_id: int
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


# ----- messages out of the core ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreInfo:
    """Sent once, when the core has loaded the model and is ready for requests."""

    num_blocks: int
    block_size: int
    max_model_len: int


@dataclass(frozen=True, slots=True)
class CoreFailed:
    """The core could not start, or its loop raised: the reason, for the error messages."""

    reason: str


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request was scheduled for the first time (for queue-time metrics and cached tokens)."""

    request_id: str
    first_scheduled_time: float
    num_cached_tokens: int


@dataclass(frozen=True, slots=True)
class EngineCoreOutputs:
    """One step's updates (possibly none: a heartbeat) and the scheduler's stats after it."""

    updates: list[RequestUpdate]
    stats: SchedulerStats
    started: list[RequestStarted] = field(default_factory=list)
    # (request id, message) for requests the core refused (a bug upstream: the frontend validates).
    rejected: list[tuple[str, str]] = field(default_factory=list)
    timestamp_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """From the core process's heartbeat thread: the process is alive, and its loop has been busy
    with the current iteration (a step, or a utility call) for busy_s (None: it is waiting)."""

    busy_s: float | None


@dataclass(frozen=True, slots=True)
class UtilityResult:
    call_id: int
    result: Any = None
    error: str | None = None


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
    def send(self, message: AddRequests | FinishRequests | UtilityCall | Shutdown) -> None:
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
    """The core in this process; each step runs in a worker thread so the event loop stays free.

    Messages are applied between steps, on the event loop, so the core never sees two threads.
    """

    def __init__(self, config: EngineConfig, max_model_len: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.max_model_len = max_model_len
        self.runner = None  # CoreRunner, built in start()
        self._inbox: list[AddRequests | FinishRequests | UtilityCall | Shutdown] = []
        self._wake = asyncio.Event()
        self._messages: asyncio.Queue[EngineCoreOutputs | UtilityResult | CoreFailed] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> CoreInfo:
        from corral.engine.core_runner import CoreRunner

        self.runner = await asyncio.to_thread(CoreRunner.build, self.config, self.max_model_len)
        self.info = self.runner.info
        self._task = asyncio.create_task(self._loop(), name="corral-core-in-process")
        return self.info

    def send(self, message: AddRequests | FinishRequests | UtilityCall | Shutdown) -> None:
        self._inbox.append(message)
        self._wake.set()

    async def _next_message(self) -> EngineCoreOutputs | UtilityResult | CoreFailed:
        return await self._messages.get()

    async def _loop(self) -> None:
        runner = self.runner
        assert runner is not None
        try:
            while True:
                inbox, self._inbox = self._inbox, []
                for message in inbox:
                    if isinstance(message, Shutdown):
                        return
                    reply = runner.handle(message)
                    if reply is not None:
                        self._messages.put_nowait(reply)
                if runner.has_work():
                    self._messages.put_nowait(await asyncio.to_thread(runner.step))
                elif not self._inbox:
                    self._wake.clear()
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the core's state is unknown now: stop serving
            logger.exception("engine core loop failed")
            self._messages.put_nowait(CoreFailed(f"engine core loop failed: {error!r}"))

    def kill(self, reason: str = "engine core killed") -> None:
        """Stop the loop as if the core had died (fault-injection for tests)."""
        if self._task is not None:
            self._task.cancel()
        self._messages.put_nowait(CoreFailed(reason))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._task is not None and not self._task.done():
            self.send(Shutdown())
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self.dead_reason is None:
            self._mark_dead("engine core shut down", expected=True)


def make_core_client(
    config: EngineConfig,
    max_model_len: int | None,
    *,
    multiprocess: bool = True,
    heartbeat_timeout_s: float = 30.0,
    step_timeout_s: float | None = None,
) -> EngineCoreClient:
    """The multi-process client (the server's), or the in-process one."""
    if not multiprocess:
        return InProcessCoreClient(config, max_model_len)  # type: ignore[arg-type]
    from corral.engine.core_process import MultiProcessCoreClient

    return MultiProcessCoreClient(
        config,
        max_model_len,
        heartbeat_timeout_s=heartbeat_timeout_s,
        step_timeout_s=step_timeout_s,
    )
