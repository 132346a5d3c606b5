"""Arrival processes: when each request of a workload is sent, seeded and deterministic.

- burst: every request at t = 0 (offline throughput, max-concurrency runs);
- poisson: exponential gaps at `rate` requests/s;
- gamma: gamma gaps at `rate` with coefficient of variation `cv` (cv = 1 is Poisson, cv > 1 is
  burstier, cv < 1 more regular);
- trace: the dataset's own timestamps, gaps multiplied by `time_scale` (0.1 replays 10x faster).

The first request arrives at t = 0 for every process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from corral.registry import Registry


@dataclass(frozen=True, slots=True)
class ArrivalOptions:
    kind: str = "burst"
    rate: float | None = None  # requests/s, for poisson and gamma
    cv: float = 1.0  # gamma's coefficient of variation of the gaps
    time_scale: float = 1.0  # trace gaps are multiplied by this


class ArrivalProcess(ABC):
    """Produces non-decreasing arrival times in seconds, starting at 0."""

    @classmethod
    def from_options(cls, options: ArrivalOptions) -> ArrivalProcess:
        return cls()

    @abstractmethod
    def times(
        self, num_requests: int, seed: int, trace_times_s: Sequence[float] | None = None
    ) -> list[float]:
        """Arrival times for num_requests requests (trace_times_s: the dataset's own, if any)."""


ARRIVAL_PROCESSES: Registry[ArrivalProcess] = Registry("arrival process")


@ARRIVAL_PROCESSES.register("burst")
class BurstArrivals(ArrivalProcess):
    def times(
        self, num_requests: int, seed: int, trace_times_s: Sequence[float] | None = None
    ) -> list[float]:
        return [0.0] * num_requests


def _cumulative(gaps: np.ndarray) -> list[float]:
    times = np.concatenate(([0.0], np.cumsum(gaps[:-1]))) if len(gaps) else gaps
    return [float(t) for t in times]


@ARRIVAL_PROCESSES.register("poisson")
class PoissonArrivals(ArrivalProcess):
    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"request rate must be > 0 requests/s, got {rate}")
        self.rate = rate

    @classmethod
    def from_options(cls, options: ArrivalOptions) -> ArrivalProcess:
        return cls(_need_rate(options))

    def times(
        self, num_requests: int, seed: int, trace_times_s: Sequence[float] | None = None
    ) -> list[float]:
        rng = np.random.default_rng(seed)
        return _cumulative(rng.exponential(1.0 / self.rate, size=num_requests))


@ARRIVAL_PROCESSES.register("gamma")
class GammaArrivals(ArrivalProcess):
    def __init__(self, rate: float, cv: float) -> None:
        if not rate > 0:
            raise ValueError(f"request rate must be > 0 requests/s, got {rate}")
        if not cv > 0:
            raise ValueError(f"burstiness cv must be > 0, got {cv}")
        self.rate = rate
        self.cv = cv

    @classmethod
    def from_options(cls, options: ArrivalOptions) -> ArrivalProcess:
        return cls(_need_rate(options), options.cv)

    def times(
        self, num_requests: int, seed: int, trace_times_s: Sequence[float] | None = None
    ) -> list[float]:
        shape = 1.0 / (self.cv * self.cv)
        scale = 1.0 / (self.rate * shape)
        rng = np.random.default_rng(seed)
        return _cumulative(rng.gamma(shape, scale, size=num_requests))


@ARRIVAL_PROCESSES.register("trace")
class TraceArrivals(ArrivalProcess):
    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time scale must be > 0, got {time_scale}")
        self.time_scale = time_scale

    @classmethod
    def from_options(cls, options: ArrivalOptions) -> ArrivalProcess:
        return cls(options.time_scale)

    def times(
        self, num_requests: int, seed: int, trace_times_s: Sequence[float] | None = None
    ) -> list[float]:
        if trace_times_s is None:
            raise ValueError("trace arrivals need a dataset with timestamps (azure-conv/-code)")
        if len(trace_times_s) < num_requests:
            raise ValueError(
                f"the trace has {len(trace_times_s)} timestamps for {num_requests} requests"
            )
        start = min(trace_times_s[:num_requests], default=0.0)
        return [(t - start) * self.time_scale for t in trace_times_s[:num_requests]]


def _need_rate(options: ArrivalOptions) -> float:
    if options.rate is None:
        raise ValueError(f"{options.kind} arrivals need a request rate (--request-rate)")
    return options.rate


def make_arrivals(options: ArrivalOptions) -> ArrivalProcess:
    """Build the arrival process options.kind names, with its parameters."""
    return ARRIVAL_PROCESSES.get(options.kind).from_options(options)
