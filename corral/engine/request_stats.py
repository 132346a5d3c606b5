"""Per-request timing in the frontend (arrival, first scheduled, first and last token), turned
into the per-batch IterationStats that metrics loggers consume. Counted per sample: a request
with n > 1 counts as n requests, as its children do in the scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.core.messages import RequestUpdate, SchedulerStats
from corral.core.request_times import RequestInterval, RequestTimes


@dataclass(slots=True)
class FinishedRequestStats:
    """One finished sample."""

    finish_reason: str  # "stop" | "length" | "abort"
    e2e_latency_s: float
    queue_time_s: float | None  # arrival -> first scheduled; None if never scheduled
    time_per_output_token_s: float | None  # first -> last token, per token; None for < 2 tokens
    num_prompt_tokens: int
    num_generation_tokens: int
    # Its scheduler request id and timeline (frontend clock, time.monotonic()): for tracing.
    request_id: str = ""
    times: RequestTimes | None = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0  # prompt tokens from the prefix cache or another engine's KV
    # Its preemptions and waits for KV (the core's clock, time.monotonic() too), if any.
    intervals: list[RequestInterval] | None = None
    # The caller's W3C trace context (traceparent, tracestate), when tracing is on.
    trace_headers: Mapping[str, str] | None = None


@dataclass(slots=True)
class IterationStats:
    """What one batch of core outputs (or an abort) changed."""

    scheduler: SchedulerStats | None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens_s: list[float] = field(default_factory=list)
    inter_token_latencies_s: list[float] = field(default_factory=list)
    finished: list[FinishedRequestStats] = field(default_factory=list)


class RequestStatsTracker:
    """Timing of each unfinished sample, keyed by its scheduler (child) request id: its
    RequestTimes (frontend clock), its number of prompt tokens and its caller's trace context."""

    def __init__(self) -> None:
        self._timings: dict[str, tuple[RequestTimes, int, Mapping[str, str] | None]] = {}

    def add(
        self,
        request_id: str,
        arrival_time: float,
        num_prompt_tokens: int,
        trace_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._timings[request_id] = (RequestTimes(arrival_time), num_prompt_tokens, trace_headers)

    def started(self, request_id: str, first_scheduled_time: float) -> None:
        timing = self._timings.get(request_id)
        if timing is not None:
            timing[0].first_scheduled_s = first_scheduled_time

    def update(self, update: RequestUpdate, now: float, stats: IterationStats) -> None:
        """Count the update's tokens (TTFT for the first, inter-token latency after it) and
        finish the sample if the core finished it."""
        timing = self._timings.get(update.request_id)
        if timing is None:
            return
        times, num_prompt_tokens, _ = timing
        if update.new_token_ids:
            stats.num_generation_tokens += len(update.new_token_ids)
            previous_token_s = times.last_token_s
            times.add_tokens(now, len(update.new_token_ids))
            if previous_token_s is not None:
                stats.inter_token_latencies_s.append(now - previous_token_s)
            elif (ttft_s := times.ttft_s) is not None:
                stats.num_prompt_tokens += num_prompt_tokens
                stats.time_to_first_tokens_s.append(ttft_s)
        if update.finish_reason is not None:
            self.finish(
                update.request_id,
                update.finish_reason,
                now,
                stats,
                update.num_preemptions,
                max(update.num_cached_tokens, 0),
                update.intervals,
            )

    def finish(
        self,
        request_id: str,
        reason: str,
        now: float,
        stats: IterationStats,
        num_preemptions: int = 0,
        num_cached_tokens: int = 0,
        intervals: list[RequestInterval] | None = None,
    ) -> None:
        timing = self._timings.pop(request_id, None)
        if timing is None:
            return
        times, num_prompt_tokens, trace_headers = timing
        e2e_s = times.finish(now)
        stats.finished.append(
            FinishedRequestStats(
                reason,
                e2e_s,
                times.queue_time_s,
                times.tpot_s,
                num_prompt_tokens,
                times.num_output_tokens,
                request_id,
                times,
                num_preemptions,
                num_cached_tokens,
                intervals,
                trace_headers,
            )
        )

    def clear(self) -> None:
        self._timings.clear()
