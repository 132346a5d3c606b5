"""The EngineCore in a process of its own, and the client that talks to it.

IPC: two multiprocessing queues (spawn context). A queue's put() hands the object to a feeder
thread that pickles and writes it, so neither side ever blocks on a send; the frontend reads
outputs on a dedicated thread and hands them to its event loop. The core loop sends a batch per
step, and fresh stats when idle; a heartbeat thread in the core process says every
`heartbeat_interval_s` that the process is alive and how long the loop's current iteration has
run. The client declares the core dead when its process exits, when no message arrives within
`heartbeat_timeout_s` (frozen or deadlocked), or when one iteration runs past `step_timeout_s`
(the loop is stuck; a slow CPU step is not mistaken for that while it is under the limit).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from typing import Any

from corral.config import EngineConfig
from corral.engine.core_client import EngineCoreClient
from corral.engine.core_loop import CoreLoop
from corral.engine.core_messages import (
    CoreFailed,
    CoreInfo,
    CoreInput,
    EngineCoreOutputs,
    Heartbeat,
    Shutdown,
    UtilityResult,
)

logger = logging.getLogger(__name__)

# The core process's exit status after its loop failed (the reason goes out as CoreFailed first).
FAILED_EXIT_CODE = 1
# How long the reader waits for each message a dead core left in the pipe.
EXIT_DRAIN_POLL_S = 0.05


# ----- the core process --------------------------------------------------------------------


def run_core_process(
    config: EngineConfig,
    inputs: multiprocessing.Queue,
    outputs: multiprocessing.Queue,
    heartbeat_interval_s: float,
    parent_pid: int,
) -> None:
    """The engine process: build the core, then loop until told to stop or orphaned."""
    # Ctrl-C reaches the whole process group; the frontend decides when the core stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _close_write_end(inputs)  # the server's death then reads as EOF here
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        core_loop = CoreLoop.build(config)
    except BaseException as error:
        outputs.put(CoreFailed(f"engine core failed to start: {error!r}"))
        _flush(outputs)
        return
    outputs.put(core_loop.info)
    heartbeat = _HeartbeatThread(core_loop, outputs, heartbeat_interval_s)
    heartbeat.start()

    def is_orphaned() -> bool:
        if os.getppid() == parent_pid:
            return False
        logger.error("the server process is gone; engine core exiting")
        outputs.cancel_join_thread()  # nobody reads: exiting must not wait for the pipe
        return True

    failed = False
    try:
        core_loop.run(
            inputs, outputs.put, idle_interval_s=heartbeat_interval_s, should_exit=is_orphaned
        )
    except BaseException:
        failed = True
        reason = "engine core loop failed:\n" + traceback.format_exc()
        logger.error(reason)
        outputs.put(CoreFailed(reason))
    heartbeat.stop()
    try:
        flush_kv = getattr(core_loop.core, "flush", None)  # background KV writes (a disk tier)
        if flush_kv is not None:
            flush_kv()
    except Exception:
        logger.exception("flushing the KV cache's writes failed")
    _flush(outputs)
    if failed:
        # The reason is sent; skip the interpreter's teardown, which can abort (SIGABRT) on
        # native threads of a core left in an unknown state.
        os._exit(FAILED_EXIT_CODE)


class _HeartbeatThread(threading.Thread):
    """Says every interval that the process is alive and how long the loop has been busy."""

    def __init__(
        self, core_loop: CoreLoop, outputs: multiprocessing.Queue, interval_s: float
    ) -> None:
        super().__init__(name="corral-core-heartbeat", daemon=True)
        self.core_loop = core_loop
        self.outputs = outputs
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            busy_since = self.core_loop.busy_since
            busy_s = None if busy_since is None else time.monotonic() - busy_since
            self.outputs.put(Heartbeat(busy_s))

    def stop(self) -> None:
        self._stopped.set()


def _close_write_end(q: multiprocessing.Queue) -> None:
    """Close this process's copy of a queue's write end (a queue it only reads)."""
    writer = getattr(q, "_writer", None)
    if writer is not None:
        writer.close()


def _flush(outputs: multiprocessing.Queue) -> None:
    outputs.close()
    outputs.join_thread()


class MultiProcessCoreClient(EngineCoreClient):
    """Runs the EngineCore loop in its own (spawned) process. launch() starts the process early
    (model loading then overlaps the frontend's own start-up); start() waits until it is ready."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        heartbeat_timeout_s: float = 30.0,
        step_timeout_s: float | None = None,
        startup_timeout_s: float = 900.0,
    ) -> None:
        super().__init__()
        if heartbeat_timeout_s <= 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s}")
        if step_timeout_s is not None and step_timeout_s <= 0:
            raise ValueError(f"step_timeout_s must be > 0 (or None), got {step_timeout_s}")
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.step_timeout_s = step_timeout_s
        self.startup_timeout_s = startup_timeout_s
        context = multiprocessing.get_context("spawn")
        self._inputs: multiprocessing.Queue = context.Queue()
        self._outputs: multiprocessing.Queue = context.Queue()
        self._inputs.cancel_join_thread()
        self.process = context.Process(
            target=run_core_process,
            args=(
                config,
                self._inputs,
                self._outputs,
                min(1.0, heartbeat_timeout_s / 5),
                os.getpid(),
            ),
            name="corral-engine-core",
            daemon=True,
        )
        self._messages: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def launch(self) -> None:
        """Start the engine process (it loads the model meanwhile); idempotent."""
        if self.process.pid is None:
            self.process.start()
            # Only the core writes outputs: without this process's copy of the pipe's write end,
            # a core that dies mid-message gives the reader EOF instead of a read that never ends.
            _close_write_end(self._outputs)

    async def start(self) -> CoreInfo:
        self._loop = asyncio.get_running_loop()
        self._messages = asyncio.Queue()
        self.launch()
        self._reader = threading.Thread(target=self._read, name="corral-core-reader", daemon=True)
        self._reader.start()
        try:
            first = await asyncio.wait_for(self._messages.get(), self.startup_timeout_s)
        except asyncio.TimeoutError:
            await self.shutdown()
            raise RuntimeError(
                f"the engine core did not start within {self.startup_timeout_s:.0f} s"
            ) from None
        if not isinstance(first, CoreInfo):
            reason = first.reason if isinstance(first, CoreFailed) else repr(first)
            await self.shutdown()
            raise RuntimeError(reason)
        self.info = first
        self._ready.set()
        return first

    def send(self, message: CoreInput) -> None:
        self._inputs.put(message)

    async def _next_message(self) -> EngineCoreOutputs | UtilityResult | CoreFailed:
        assert self._messages is not None, "start() first"
        return await self._messages.get()

    def _read(self) -> None:
        """Reader thread: hand each message to the event loop; watch liveness and heartbeats."""
        poll_s = min(0.1, self.heartbeat_timeout_s / 10)
        last_seen = time.monotonic()
        while not self._stopping.is_set():
            try:
                message = self._outputs.get(timeout=poll_s)
            except queue.Empty:
                message = None
            except (EOFError, OSError) as error:  # the core's end of the pipe closed
                self.process.join(1.0)
                if self.process.is_alive():
                    self._die(f"the engine core's output pipe broke: {error!r}")
                else:
                    self._exited()
                return
            now = time.monotonic()
            if message is not None:
                last_seen = now
                if isinstance(message, Heartbeat):
                    busy_s, limit = message.busy_s, self.step_timeout_s
                    if busy_s is not None and limit is not None and busy_s > limit:
                        self._die(
                            f"the engine core loop stalled: one step has run for {busy_s:.1f} s "
                            f"(step timeout {limit:g} s)"
                        )
                        self.process.kill()
                        return
                    continue
                self._deliver(message)
                if isinstance(message, CoreFailed):
                    return
                continue
            if not self.process.is_alive():
                self._exited()
                return
            if self._ready.is_set() and now - last_seen > self.heartbeat_timeout_s:
                self._die(
                    f"the engine core stalled: no heartbeat for {now - last_seen:.1f} s "
                    f"(heartbeat timeout {self.heartbeat_timeout_s:g} s)"
                )
                self.process.kill()  # a core that comes back half-way would be worse
                return

    def _exited(self) -> None:
        """The core process is gone. What it wrote before exiting may still be in the pipe (the
        poll above can time out just before it arrives): deliver it, so that a CoreFailed names
        the cause, then report the exit."""
        while True:
            try:
                message = self._outputs.get(timeout=EXIT_DRAIN_POLL_S)
            except (queue.Empty, EOFError, OSError):
                break
            if isinstance(message, Heartbeat):
                continue
            self._deliver(message)
            if isinstance(message, CoreFailed):
                return
        self._die(f"the engine core process exited (exit code {self.process.exitcode})")

    def _deliver(self, message: Any) -> None:
        assert self._loop is not None and self._messages is not None
        try:
            self._loop.call_soon_threadsafe(self._messages.put_nowait, message)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._stopping.set()

    def _die(self, reason: str) -> None:
        if not self._stopping.is_set():
            self._deliver(CoreFailed(reason))

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self.process.pid is not None and self.process.is_alive():
            self.send(Shutdown())
            await asyncio.to_thread(self.process.join, timeout_s)
            if self.process.is_alive():
                self.process.kill()
                await asyncio.to_thread(self.process.join, 5.0)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 1.0)
        if self.dead_reason is None:
            self._mark_dead("engine core shut down", expected=True)
        for q in (self._inputs, self._outputs):
            q.close()
