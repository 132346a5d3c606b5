"""ReplicaSupervisor: restarts the local launcher's replicas that exit while it serves.

A replica that exits (a crash, an out-of-memory kill, an engine that could not recover) is
started again on the same port, cores and flags, so the router's health checks bring it back
into the rotation without any change of configuration. Restarts of one replica back off (1 s,
then doubling up to 60 s) and stop after max_restarts; a replica that ran for RESET_AFTER_S
since its last start has its count reset (a rare crash is not a crash loop).

A restarted replica is forked from the supervisor's thread, so its PR_SET_PDEATHSIG parent is
that thread: stop() (which ends it) comes only when the launcher stops every replica anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
RESET_AFTER_S = 600.0


class _Process(Protocol):
    def poll(self) -> int | None: ...


class Restartable(Protocol):
    index: int
    process: _Process

    def restart(self) -> None: ...


class ReplicaSupervisor:
    """Watches replicas from a thread (start/stop); see the module docstring."""

    def __init__(self, replicas: list[Restartable], *, max_restarts: int) -> None:
        if max_restarts < 0:
            raise ValueError(f"--max-replica-restarts must be >= 0, got {max_restarts}")
        self.replicas = replicas
        self.max_restarts = max_restarts
        self.num_restarts = [0] * len(replicas)
        self._started_at = [time.monotonic()] * len(replicas)
        self._restart_at: list[float | None] = [None] * len(replicas)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.max_restarts == 0:
            return
        self._thread = threading.Thread(target=self._loop, name="corral-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(30)

    def check(self, now: float) -> None:
        """One pass: schedule a restart for each replica that exited, run those due."""
        for slot, replica in enumerate(self.replicas):
            code = replica.process.poll()
            if code is None:
                if now - self._started_at[slot] >= RESET_AFTER_S:
                    self.num_restarts[slot] = 0
                continue
            if self.num_restarts[slot] >= self.max_restarts:
                continue  # given up: the router keeps it out of the rotation
            due = self._restart_at[slot]
            if due is None:
                backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** self.num_restarts[slot])
                self._restart_at[slot] = now + backoff
                logger.warning(
                    "replica %d exited (%s); restarting it in %.0f s (restart %d of %d)",
                    replica.index, code, backoff, self.num_restarts[slot] + 1, self.max_restarts,
                )  # fmt: skip
            elif now >= due:
                self._restart_at[slot] = None
                self.num_restarts[slot] += 1
                self._started_at[slot] = now
                replica.restart()
                if self.num_restarts[slot] == self.max_restarts:
                    logger.warning("replica %d: last restart (--max-replica-restarts)", slot)

    def _loop(self) -> None:
        while not self._stopped.wait(CHECK_INTERVAL_S):
            try:
                self.check(time.monotonic())
            except Exception:  # never let the supervisor die silently
                logger.exception("replica supervisor pass failed")
