"""RequestTimes: one request's timeline and the latencies derived from it.

The one place TTFT, TPOT, end-to-end latency and queue time are computed, for the scheduler's SLO
accounting (SLOTracker), the frontend's metrics (RequestStatsTracker) and the records that
`corral bench` and `corral simulate` summarize (RequestRecord: first and last output chunk as first
and last token). Every time of one record is on one clock, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestTimes:
    """arrival_s <= first_scheduled_s; first_token_s <= last_token_s <= finished_s where set.
    finished_s is the end (finish or abort); unset, the last token ends the request."""

    arrival_s: float
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_s: float | None = None
    num_output_tokens: int = 0

    def add_tokens(self, now_s: float, num_tokens: int) -> None:
        """Count num_tokens output tokens produced at now_s."""
        if self.first_token_s is None:
            self.first_token_s = now_s
        self.last_token_s = now_s
        self.num_output_tokens += num_tokens

    def finish(self, now_s: float) -> float:
        """Stamp the end at now_s; returns the end-to-end latency."""
        self.finished_s = now_s
        return now_s - self.arrival_s

    @property
    def ttft_s(self) -> float | None:
        """Arrival to the first token; None before it."""
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        """Arrival to the end (the finish, else the last token); None before either."""
        end_s = self.finished_s if self.finished_s is not None else self.last_token_s
        return None if end_s is None else end_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """First to last token over the tokens after the first; None for fewer than 2 tokens."""
        if self.num_output_tokens < 2 or self.first_token_s is None or self.last_token_s is None:
            return None
        return (self.last_token_s - self.first_token_s) / (self.num_output_tokens - 1)

    @property
    def queue_time_s(self) -> float | None:
        """Arrival to first scheduled (never negative); None if never scheduled."""
        if self.first_scheduled_s is None:
            return None
        return max(0.0, self.first_scheduled_s - self.arrival_s)


# The kinds of RequestInterval.
PREEMPTION = "preemption"
KV_TRANSFER = "kv_transfer"


@dataclass(slots=True)
class RequestInterval:
    """A stretch of one request's life that the scheduler marks for request tracing, on its
    clock: a preemption (from losing its KV to being scheduled again) or a wait for KV
    (kv_transfer: fetched from another engine, or read back from the disk tier). Requests that
    never wait keep none (Request.intervals is None)."""

    kind: str  # PREEMPTION | KV_TRANSFER
    start_s: float
    end_s: float | None = None  # None: still open
    # preemption: "recompute" | "swap" (how it lost its KV); kv_transfer: "remote" | "disk".
    detail: str = ""
    # preemption: the computed tokens it held when preempted, and (once resumed) those it had
    # to compute again (not restored by a swap-in or a prefix-cache hit).
    num_tokens: int = 0
    num_recomputed_tokens: int | None = None
