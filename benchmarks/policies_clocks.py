"""Clocks for replaying a workload on the real engine (benchmarks/policies.py).

- wall: real time. On a machine shared with other jobs, latency near saturation swings with
  their load.
- cpu: this process's CPU seconds, plus the idle gaps skipped between arrivals. Immune to being
  descheduled, not to slower cores (shared caches, hyperthreads, frequency).
- step: the engine runs for real, but each step advances time by a + b * tokens + c * requests,
  fitted to this engine's measured CPU step times beforehand: the same decisions always take the
  same time, so policies compare without the machine's noise. The step cost is measured, the
  queueing on top of it is exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from corral.core.messages import SchedulerOutput


class CPUClock:
    def __init__(self) -> None:
        self._offset = -time.process_time()

    def __call__(self) -> float:
        return time.process_time() + self._offset

    def skip_to(self, when_s: float) -> None:
        self._offset += max(0.0, when_s - self())

    def after_step(self, output: SchedulerOutput) -> None:
        pass


class WallClock(CPUClock):
    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self._start

    def skip_to(self, when_s: float) -> None:
        time.sleep(max(0.0, when_s - self()))


class StepCostClock(CPUClock):
    def __init__(self, coefficients: Sequence[float]) -> None:
        self.coefficients = tuple(coefficients)
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def skip_to(self, when_s: float) -> None:
        self.now_s = max(self.now_s, when_s)

    def after_step(self, output: SchedulerOutput) -> None:
        self.now_s += step_cost_s(self.coefficients, output)


def step_features(output: SchedulerOutput) -> tuple[float, float, float]:
    return (1.0, float(output.total_num_scheduled_tokens), float(len(output.num_scheduled_tokens)))


def step_cost_s(coefficients: Sequence[float], output: SchedulerOutput) -> float:
    cost = sum(c * x for c, x in zip(coefficients, step_features(output)))
    return max(cost, 0.0)


def fit_step_cost(samples: Sequence[tuple[SchedulerOutput, float]]) -> tuple[float, ...]:
    """Least-squares (a, b, c) of seconds ~ a + b * tokens + c * requests over measured steps."""
    features = np.array([step_features(output) for output, _ in samples])
    seconds = np.array([seconds for _, seconds in samples])
    coefficients, *_ = np.linalg.lstsq(features, seconds, rcond=None)
    return tuple(float(c) for c in coefficients)


def make_clock(kind: str, coefficients: Sequence[float] | None = None) -> CPUClock:
    if kind == "step":
        if coefficients is None:
            raise ValueError("the step clock needs fitted step costs")
        return StepCostClock(coefficients)
    return CPUClock() if kind == "cpu" else WallClock()
