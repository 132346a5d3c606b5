"""CoreLoop: a core whose requests can make no progress is not stepped in a busy loop that
sends a message per empty step (issue 13, defect 1)."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from corral.core.messages import SchedulerStats
from corral.engine.core_loop import CoreLoop
from corral.engine.core_messages import Shutdown


class _StuckCore:
    """Has a request that never gets a token (as one waiting on a disk read)."""

    def __init__(self) -> None:
        self.kv_manager = SimpleNamespace(num_blocks=4, block_size=16)
        self.scheduler = SimpleNamespace(max_live_tokens=None)
        self.last_step_num_tokens = 0
        self.num_steps = 0

    def has_unfinished_requests(self) -> bool:
        return True

    def step(self) -> list:
        self.num_steps += 1
        return []

    def stats(self) -> SchedulerStats:
        return SchedulerStats(0, 1, 0.0, 0, 0, 0)


def test_a_stalled_core_sends_nothing_until_the_stats_interval():
    core = _StuckCore()
    loop = CoreLoop(core, max_model_len=64)
    inbox: queue.Queue = queue.Queue()
    sent: list = []
    thread = threading.Thread(
        target=loop.run, args=(inbox, sent.append), kwargs={"idle_interval_s": 3600.0}
    )
    thread.start()
    while core.num_steps < 20:
        threading.Event().wait(0.01)
    inbox.put(Shutdown())
    thread.join(10)
    assert not thread.is_alive()
    assert sent == []  # a spinning loop sent one message per step
