"""Time series of a run for the plots: output throughput per time bin and requests in flight."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from corral.bench.record import ServeRecord


def default_bin_s(duration_s: float, num_bins: int = 60) -> float:
    """A bin width giving about num_bins bins, at least 0.1 s."""
    return max(0.1, duration_s / num_bins)


def output_throughput(
    records: Sequence[ServeRecord], duration_s: float, bin_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(bin start times, output tokens/s in each bin) over completed requests. A record's tokens
    are spread evenly over its output events (an event may carry several tokens)."""
    if not bin_s > 0:
        raise ValueError(f"bin width must be > 0 s, got {bin_s}")
    num_bins = max(1, int(np.ceil(duration_s / bin_s)))
    edges = np.arange(num_bins + 1) * bin_s
    times: list[float] = []
    weights: list[float] = []
    for record in records:
        request = record.record
        if not request.is_ok:
            continue
        per_event = request.num_output_tokens / len(request.token_times_s)
        times.extend(request.token_times_s)
        weights.extend([per_event] * len(request.token_times_s))
    counts, _ = np.histogram(np.clip(times, 0, edges[-1]), bins=edges, weights=weights)
    return edges[:-1], counts / bin_s


def in_flight(records: Sequence[ServeRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests in flight from that time on): a step function over send and end times
    of every request that was sent (failed ones included)."""
    events = []
    for record in records:
        if not record.is_sent:
            continue
        events.append((record.record.arrival_time_s, 1))
        events.append((record.end_time_s, -1))
    if not events:
        return np.zeros(1), np.zeros(1)
    events.sort()
    times = np.array([0.0] + [time for time, _ in events])
    counts = np.concatenate(([0], np.cumsum([step for _, step in events])))
    return times, counts
