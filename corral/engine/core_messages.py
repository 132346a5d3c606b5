"""Everything that crosses the boundary between the frontend (AsyncLLM) and an EngineCore,
whether the core runs in a thread of this process or in a process of its own.

Into the core: AddRequests, FinishRequests, UtilityCall, Shutdown. Out of the core: CoreInfo
(once, when ready), EngineCoreOutputs (a step's updates and stats), UtilityResult, Heartbeat (the
core process's liveness) and CoreFailed (the core cannot go on). All are plain, picklable values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.core.messages import RequestUpdate, SchedulerStats
from corral.request import Request, RequestStatus

# ----- into the core ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequests:
    requests: list[Request]


@dataclass(frozen=True, slots=True)
class FinishRequests:
    request_ids: list[str]
    status: RequestStatus = RequestStatus.FINISHED_ABORTED


@dataclass(frozen=True, slots=True)
class UtilityCall:
    """Ask the core for something outside the step loop (see CoreLoop.UTILITIES)."""

    call_id: int
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


CoreInput = AddRequests | FinishRequests | UtilityCall | Shutdown


# ----- out of the core -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoreInfo:
    """Sent once, when the core has loaded the model and is ready for requests."""

    num_blocks: int
    block_size: int
    max_model_len: int
    # With a bounded attention window, the most KV slots one request holds at once.
    max_live_tokens: int | None = None


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
    """One step's updates (possibly none: fresh stats while idle) and the scheduler's stats."""

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


CoreOutput = CoreInfo | CoreFailed | EngineCoreOutputs | Heartbeat | UtilityResult
