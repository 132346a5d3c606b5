"""CoreLoop: an EngineCore behind an inbox. It applies the client's messages, steps while there
is work, reports when each request is first scheduled, and answers a few utility calls. The same
loop runs in a thread of the frontend's process (InProcessCoreClient) and in a process of its own
(MultiProcessCoreClient); only the inbox and the send function differ."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any, Protocol

from corral.config import EngineConfig
from corral.core.slo import SLOStats
from corral.engine.core_messages import (
    AddRequests,
    CoreInfo,
    CoreInput,
    CoreOutput,
    EngineCoreOutputs,
    FinishRequests,
    RequestStarted,
    Shutdown,
    UtilityCall,
    UtilityResult,
)
from corral.engine.fault_injection import Fault
from corral.request import Request

# How long a loop whose requests can make no progress waits for a message before trying again
# (requests waiting for a disk read, which the executor reports on a later step).
STALLED_WAIT_S = 0.002


class Inbox(Protocol):
    """A queue of messages into the core: queue.Queue and multiprocessing.Queue both fit."""

    def get(self, block: bool = True, timeout: float | None = None) -> CoreInput: ...

    def get_nowait(self) -> CoreInput: ...


class CoreLoop:
    """Runs one EngineCore on the messages of an inbox (see run())."""

    UTILITIES = (
        "kv_state", "check_integrity", "reset_prefix_cache", "sleep", "slo_stats", "migrate_out",
        "precopy", "prefetch", "prefetch_result", "dashboard",
    )  # fmt: skip

    def __init__(self, core: Any, max_model_len: int) -> None:
        self.core = core  # corral.engine.engine_core.EngineCore
        self.info = CoreInfo(
            num_blocks=core.kv_manager.num_blocks,
            max_live_tokens=core.scheduler.max_live_tokens,
            block_size=core.kv_manager.block_size,
            max_model_len=max_model_len,
        )
        # When the current iteration (messages, then a step) began; None while waiting for work.
        self.busy_since: float | None = None
        self.fault = Fault.from_env()  # None unless CORRAL_FAULT is set (tests, drills)
        self.num_steps = 0
        # Requests added but not yet scheduled once (their queue time is still unknown).
        self._unstarted: dict[str, Request] = {}
        self._rejected: list[tuple[str, str]] = []

    @classmethod
    def build(cls, config: EngineConfig) -> CoreLoop:
        """Load the model and build the core (slow: seconds to minutes)."""
        from corral.engine.engine_core import EngineCore
        from corral.model.resolve import resolve_model

        model_dir, arch, max_model_len = resolve_model(config.model, config.cache.kv_window_policy)
        core = EngineCore(config, model_dir, arch, max_model_len)
        _warm_up_kernels(core)
        return cls(core, max_model_len)

    def run(
        self,
        inbox: Inbox,
        send: Callable[[CoreOutput], None],
        *,
        idle_interval_s: float,
        should_exit: Callable[[], bool] = lambda: False,
    ) -> None:
        """Apply messages and step until a Shutdown arrives or should_exit() (nobody listens
        any more: checked once an iteration).

        Between steps, everything queued is applied; while there is no work, the loop waits on
        the inbox and sends fresh stats (aborts change them) every idle_interval_s.
        """
        last_sent = time.monotonic()
        is_stalled = False  # the last step had work but could compute nothing
        while not should_exit():
            self.busy_since = None
            if not self.has_work():
                wait_s = idle_interval_s
            else:
                wait_s = STALLED_WAIT_S if is_stalled else 0.0
            messages = _receive(inbox, wait_s)
            self.busy_since = time.monotonic()
            for message in messages:
                if isinstance(message, Shutdown):
                    return
                reply = self.handle(message)
                if reply is not None:
                    send(reply)
            now = time.monotonic()
            is_stalled = False
            if self.has_work():
                outputs = self.step()
                is_stalled = not (self.core.last_step_num_tokens or outputs.updates)
                # A stalled step changes nothing worth sending at once (a spinning loop would
                # send thousands a second): it goes out only as the periodic stats.
                if not is_stalled or outputs.started or outputs.rejected:
                    send(outputs)
                    last_sent = time.monotonic()
                elif now - last_sent >= idle_interval_s:
                    send(outputs)
                    last_sent = now
            elif now - last_sent >= idle_interval_s:
                send(self.outputs([]))
                last_sent = now

    def has_work(self) -> bool:
        return self.core.has_unfinished_requests()

    def handle(self, message: AddRequests | FinishRequests | UtilityCall) -> UtilityResult | None:
        """Apply one message. A request the core refuses is reported, never raised."""
        if isinstance(message, AddRequests):
            for request in message.requests:
                try:
                    self.core.add_request(request)
                    self._unstarted[request.request_id] = request
                except ValueError as error:
                    self._rejected.append((request.request_id, str(error)))
            return None
        if isinstance(message, FinishRequests):
            self.core.finish_requests(message.request_ids, message.status)
            for request_id in message.request_ids:
                self._unstarted.pop(request_id, None)
            return None
        return self._call(message)

    def step(self) -> EngineCoreOutputs:
        """One engine step, with the stats after it."""
        self.num_steps += 1
        if self.fault is not None:
            self.fault.before_step(self.num_steps)
        updates = self.core.step() if self.core.has_unfinished_requests() else []
        return self.outputs(updates)

    def outputs(self, updates: list) -> EngineCoreOutputs:
        """Updates, the requests first scheduled since the last call, and the stats now."""
        started = []
        if self._unstarted:
            for update in updates:
                if update.finish_reason is not None and update.request_id in self._unstarted:
                    request = self._unstarted[update.request_id]
                    if request.first_scheduled_time is None:  # refused before scheduling
                        del self._unstarted[update.request_id]
            for request_id, request in list(self._unstarted.items()):
                if request.first_scheduled_time is not None:
                    started.append(
                        RequestStarted(
                            request_id,
                            request.first_scheduled_time,
                            max(request.num_cached_tokens, 0),
                        )
                    )
                    del self._unstarted[request_id]
        rejected, self._rejected = self._rejected, []
        return EngineCoreOutputs(updates, self.core.stats(), started, rejected, time.monotonic())

    # ----- utilities, for tests and operators ----------------------------------------------

    def _call(self, call: UtilityCall) -> UtilityResult:
        if call.method not in self.UTILITIES:
            return UtilityResult(call.call_id, error=f"unknown utility {call.method!r}")
        try:
            return UtilityResult(call.call_id, getattr(self, "_" + call.method)(*call.args))
        except Exception as error:
            return UtilityResult(call.call_id, error=f"{call.method} failed: {error!r}")

    def _kv_state(self) -> dict[str, int]:
        kv = self.core.kv_manager
        return {
            "num_blocks": kv.num_blocks,
            "num_free_blocks": kv.num_free_blocks,
            "num_requests": len(self.core.scheduler.requests),
        }

    def _check_integrity(self) -> dict[str, int]:
        self.core.kv_manager.check_integrity()
        return self._kv_state()

    def _slo_stats(self) -> SLOStats:
        return self.core.scheduler.slo_stats()

    def _dashboard(self, since_step: int) -> dict:
        return self.core.dashboard_frame(since_step)

    def _migrate_out(
        self, max_num_requests: int, request_ids: list[str], max_num_tokens: int | None = None
    ) -> list[str]:
        """Live migration: the ids of the requests moved out; their updates (a Resume each)
        go out with the next step's outputs."""
        updates = self.core.migrate_out(max_num_requests, request_ids, max_num_tokens)
        self.core.defer_updates(updates)
        return [update.request_id for update in updates]

    def _precopy(
        self, max_num_requests: int, request_ids: list[str], max_num_tokens: int | None
    ) -> list[dict]:
        return self.core.precopy(max_num_requests, request_ids, max_num_tokens)

    def _prefetch(self, kv_transfer_params: dict, block_hashes: list[str]) -> str | None:
        return self.core.prefetch(kv_transfer_params, block_hashes)

    def _prefetch_result(self, fetch_id: str) -> bool | None:
        return self.core.prefetch_result(fetch_id)

    def _reset_prefix_cache(self) -> int:
        return self.core.kv_manager.reset_prefix_cache()

    def _sleep(self, seconds: float) -> None:
        """Block the loop (fault injection: a stalled step)."""
        time.sleep(seconds)


def _receive(inbox: Inbox, timeout_s: float) -> list[CoreInput]:
    """Everything queued now; waits up to timeout_s for the first message when none is."""
    messages = []
    try:
        if timeout_s > 0:
            messages.append(inbox.get(timeout=timeout_s))
        while True:
            messages.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return messages


def _warm_up_kernels(core: Any) -> None:
    """Compile or load the CPU kernels now, so the first request does not stall the loop."""
    if getattr(core.executor, "device", None) is not None and core.executor.device.type == "cpu":
        from corral.model.kernels import cpu_kernels

        cpu_kernels()
