"""Per-request records and the summary that `corral bench` and `corral simulate` both report.

Definitions (all times on one clock, in seconds; computed by corral/core/request_times.py):
- TTFT = time of the first output chunk - arrival time;
- end-to-end latency (E2E) = time of the last output chunk - arrival time;
- TPOT = (E2E - TTFT) / (output tokens - 1), for requests with at least 2 output tokens;
- ITL (inter-token latency) = gaps between consecutive chunks of one request, pooled over all
  requests (a chunk may carry several tokens when a server batches its stream);
- throughputs divide totals over completed requests by the run's duration (first arrival to
  last token, unless the caller gives the measured wall time);
- goodput = completed requests meeting every SLO bound, per second of duration.
A request with n > 1 samples (num_samples) counts as one request: its output tokens are those of
all samples, its first token the first of any sample, its last the last of any; TPOT divides by
the mean output tokens per sample less one (a sample's time per token), and ITL pools the gaps
within each sample (sample_token_times_s) when the record has them. Sample throughput is
completed requests' samples per second.
Percentiles interpolate linearly between order statistics (numpy's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from corral.core.request_times import RequestTimes
from corral.core.slo_target import SLO


@dataclass(slots=True)
class RequestRecord:
    """What a client observed for one request."""

    request_id: str
    arrival_time_s: float
    num_prompt_tokens: int
    num_output_tokens: int = 0
    # When each output chunk arrived (one per token in the simulator), of any sample.
    token_times_s: Sequence[float] = field(default_factory=list)
    error: str | None = None
    # The request's n; with n > 1, num_output_tokens counts every sample's tokens.
    num_samples: int = 1
    # Per sample (by choice index), when its chunks arrived; None: not known per sample.
    sample_token_times_s: Sequence[Sequence[float]] | None = None

    @property
    def is_ok(self) -> bool:
        return self.error is None and len(self.token_times_s) > 0

    @property
    def times(self) -> RequestTimes:
        """The record as a RequestTimes: the first and the last chunk are the first and the last
        token (no first or last token when no chunk came)."""
        chunks_s = self.token_times_s
        has_chunks = len(chunks_s) > 0
        return RequestTimes(
            self.arrival_time_s,
            first_token_s=chunks_s[0] if has_chunks else None,
            last_token_s=chunks_s[-1] if has_chunks else None,
            num_output_tokens=self.num_output_tokens_per_sample,
        )

    @property
    def num_output_tokens_per_sample(self) -> int:
        """Output tokens of the mean sample (rounded; all of them when n == 1)."""
        if self.num_samples == 1:
            return self.num_output_tokens
        return round(self.num_output_tokens / self.num_samples)

    def inter_token_gaps_s(self) -> np.ndarray:
        """Gaps between consecutive chunks, within each sample when the record knows them."""
        if self.sample_token_times_s is None:
            return np.diff(np.asarray(self.token_times_s, dtype=np.float64))
        gaps = [np.diff(np.asarray(t, dtype=np.float64)) for t in self.sample_token_times_s]
        return np.concatenate(gaps) if gaps else np.empty(0)

    @property
    def ttft_s(self) -> float | None:
        return self.times.ttft_s

    @property
    def e2e_s(self) -> float | None:
        return self.times.e2e_s

    @property
    def tpot_s(self) -> float | None:
        return self.times.tpot_s


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Milliseconds; all None when no request had the metric."""

    mean_ms: float | None
    median_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    count: int

    @classmethod
    def of(cls, values_s: np.ndarray) -> LatencyStats:
        if values_s.size == 0:
            return cls(None, None, None, None, None, 0)
        ms = values_s * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(ms.mean()), float(p50), float(p90), float(p99), float(ms.max()), ms.size)


@dataclass(frozen=True, slots=True)
class MetricsSummary:
    num_completed: int
    num_failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    slo: str
    num_slo_met: int | None
    goodput: float | None
    errors: dict[str, int]
    # Samples of the completed requests (their n summed) and per second of duration.
    total_samples: int = 0
    sample_throughput: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    records: Sequence[RequestRecord], *, duration_s: float | None = None, slo: SLO | None = None
) -> MetricsSummary:
    """Aggregate per-request records into the report's numbers (see the module docstring)."""
    done = [record for record in records if record.is_ok]
    errors: dict[str, int] = {}
    for record in records:
        if not record.is_ok:
            message = record.error or "no output"
            errors[message] = errors.get(message, 0) + 1
    if duration_s is None:
        starts = [record.arrival_time_s for record in records]
        ends = [record.token_times_s[-1] for record in done]
        duration_s = (max(ends) - min(starts)) if done else 0.0
    times = [record.times for record in done]
    ttft = np.array([t.ttft_s for t in times], dtype=np.float64)
    e2e = np.array([t.e2e_s for t in times], dtype=np.float64)
    tpots = [t.tpot_s for t in times]
    tpot = np.array([value for value in tpots if value is not None], dtype=np.float64)
    gaps = [record.inter_token_gaps_s() for record in done]
    itl = np.concatenate(gaps) if gaps else np.empty(0)
    num_in = sum(record.num_prompt_tokens for record in done)
    num_out = sum(record.num_output_tokens for record in done)
    num_samples = sum(record.num_samples for record in done)
    per_s = (lambda count: count / duration_s) if duration_s > 0 else (lambda count: 0.0)
    num_met = goodput = None
    if slo is not None and not slo.is_empty:
        num_met = sum(slo.is_met(t, p, e) for t, p, e in zip(ttft.tolist(), tpots, e2e.tolist()))
        goodput = per_s(num_met)
    return MetricsSummary(
        num_completed=len(done),
        num_failed=len(records) - len(done),
        duration_s=duration_s,
        total_input_tokens=num_in,
        total_output_tokens=num_out,
        request_throughput=per_s(len(done)),
        input_throughput=per_s(num_in),
        output_throughput=per_s(num_out),
        total_token_throughput=per_s(num_in + num_out),
        ttft=LatencyStats.of(ttft),
        tpot=LatencyStats.of(tpot),
        itl=LatencyStats.of(itl),
        e2e=LatencyStats.of(e2e),
        slo=slo.describe() if slo is not None else "none",
        num_slo_met=num_met,
        goodput=goodput,
        errors=errors,
        total_samples=num_samples,
        sample_throughput=per_s(num_samples),
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_summary(summary: MetricsSummary, title: str) -> str:
    """The fixed-width table both `corral bench` and `corral simulate` print."""
    lines = [
        f"{'=' * 20} {title} {'=' * 20}",
        f"{'Requests completed / failed:':<40}{summary.num_completed} / {summary.num_failed}",
        f"{'Duration (s):':<40}{summary.duration_s:.2f}",
        f"{'Total input / output tokens:':<40}"
        f"{summary.total_input_tokens} / {summary.total_output_tokens}",
        f"{'Request throughput (req/s):':<40}{summary.request_throughput:.3f}",
    ]
    if summary.total_samples != summary.num_completed:  # some request had n > 1
        lines.append(
            f"{'Sample throughput (samples/s):':<40}{summary.sample_throughput:.3f} "
            f"({summary.total_samples} samples)"
        )
    lines += [
        f"{'Input token throughput (tok/s):':<40}{summary.input_throughput:.2f}",
        f"{'Output token throughput (tok/s):':<40}{summary.output_throughput:.2f}",
        f"{'Total token throughput (tok/s):':<40}{summary.total_token_throughput:.2f}",
    ]
    if summary.goodput is not None:
        lines.append(
            f"{'Goodput (req/s):':<40}{summary.goodput:.3f} "
            f"({summary.num_slo_met}/{summary.num_completed} met {summary.slo})"
        )
    lines.append(f"{'(ms)':<10}{'mean':>11}{'median':>11}{'p90':>11}{'p99':>11}{'max':>11}")
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats: LatencyStats = getattr(summary, name)
        cells = (stats.mean_ms, stats.median_ms, stats.p90_ms, stats.p99_ms, stats.max_ms)
        lines.append(f"{name.upper():<10}" + "".join(f"{_cell(v):>11}" for v in cells))
    for message, count in sorted(summary.errors.items()):
        lines.append(f"error x{count}: {message}")
    return "\n".join(lines)
