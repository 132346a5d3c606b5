"""Per-request timing in the frontend (arrival, first scheduled, first and last token), turned
into the per-batch IterationStats that metrics loggers consume. Counted per sample: a request
with n > 1 counts as n requests, as its children do in the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.core.messages import RequestUpdate, SchedulerStats


@dataclass(slots=True)
class FinishedRequestStats:
    """One finished sample."""

    finish_reason: str  # "stop" | "length" | "abort"
    e2e_latency_s: float
    queue_time_s: float | None  # arrival -> first scheduled; None if never scheduled
    time_per_output_token_s: float | None  # first -> last token, per token; None for < 2 tokens
    num_prompt_tokens: int
    num_generation_tokens: int


@dataclass(slots=True)
class IterationStats:
    """What one batch of core outputs (or an abort) changed."""

    scheduler: SchedulerStats | None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens_s: list[float] = field(default_factory=list)
    inter_token_latencies_s: list[float] = field(default_factory=list)
    finished: list[FinishedRequestStats] = field(default_factory=list)


@dataclass(slots=True)
class _Timing:
    arrival_time: float
    num_prompt_tokens: int
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    num_tokens: int = 0


class RequestStatsTracker:
    """Timing of each unfinished sample, keyed by its scheduler (child) request id."""

    def __init__(self) -> None:
        self._timings: dict[str, _Timing] = {}

    def add(self, request_id: str, arrival_time: float, num_prompt_tokens: int) -> None:
        self._timings[request_id] = _Timing(arrival_time, num_prompt_tokens)

    def started(self, request_id: str, first_scheduled_time: float) -> None:
        timing = self._timings.get(request_id)
        if timing is not None:
            timing.first_scheduled_time = first_scheduled_time

    def update(self, update: RequestUpdate, now: float, stats: IterationStats) -> None:
        """Count the update's tokens (TTFT for the first, inter-token latency after it) and
        finish the sample if the core finished it."""
        timing = self._timings.get(update.request_id)
        if timing is None:
            return
        if update.new_token_ids:
            stats.num_generation_tokens += len(update.new_token_ids)
            if timing.first_token_time is None:
                timing.first_token_time = now
                stats.num_prompt_tokens += timing.num_prompt_tokens
                stats.time_to_first_tokens_s.append(now - timing.arrival_time)
            else:
                stats.inter_token_latencies_s.append(now - (timing.last_token_time or now))
            timing.last_token_time = now
            timing.num_tokens += len(update.new_token_ids)
        if update.finish_reason is not None:
            self.finish(update.request_id, update.finish_reason, now, stats)

    def finish(self, request_id: str, reason: str, now: float, stats: IterationStats) -> None:
        timing = self._timings.pop(request_id, None)
        if timing is None:
            return
        queue_time = None
        if timing.first_scheduled_time is not None:
            queue_time = max(0.0, timing.first_scheduled_time - timing.arrival_time)
        per_token = None
        if timing.num_tokens > 1 and timing.first_token_time and timing.last_token_time:
            per_token = (timing.last_token_time - timing.first_token_time) / (timing.num_tokens - 1)
        stats.finished.append(
            FinishedRequestStats(
                reason,
                now - timing.arrival_time,
                queue_time,
                per_token,
                timing.num_prompt_tokens,
                timing.num_tokens,
            )
        )

    def clear(self) -> None:
        self._timings.clear()
