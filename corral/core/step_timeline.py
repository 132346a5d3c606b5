"""StepTimeline: the engine's recent steps (when, how long, how many tokens and requests) in a
ring, for the dashboard's step timeline. One append per step (the counts the scheduler output
already has); read, with a cursor, only when a dashboard page asks."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from corral.core.messages import SchedulerOutput

MAX_NUM_STEPS = 1024


class StepRecord(NamedTuple):
    seq: int  # 1, 2, ... over the engine's life
    end_s: float  # the engine's clock (time.monotonic(), or the simulator's)
    duration_s: float
    num_tokens: int
    num_requests: int
    num_decode_requests: int  # requests with a chunk of one token
    num_preempted: int  # requests preempted by this step's schedule


class StepTimeline:
    def __init__(self, max_num_steps: int = MAX_NUM_STEPS) -> None:
        self._steps: deque[StepRecord] = deque(maxlen=max_num_steps)
        self._seq = 0

    def record(self, output: SchedulerOutput, start_s: float, end_s: float) -> None:
        """Add one step (not called for empty steps)."""
        self._seq += 1
        counts = output.num_scheduled_tokens
        num_decode = sum(1 for num_tokens in counts.values() if num_tokens == 1)
        self._steps.append(
            StepRecord(
                self._seq,
                end_s,
                end_s - start_s,
                output.total_num_scheduled_tokens,
                len(counts),
                num_decode,
                len(output.preempted_request_ids),
            )
        )

    def since(self, seq: int) -> list[list[float]]:
        """The steps after seq (all kept ones for 0), oldest first, each as a list."""
        return [list(step) for step in self._steps if step.seq > seq]

    @property
    def last_seq(self) -> int:
        return self._seq
