"""The dashboard's numbers, read from the server's Prometheus registry (the one /metrics
renders: one source of truth), and what they mean over recent windows: throughput, TTFT and TPOT
percentiles from the histograms' bucket counts, SLO attainment per class."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

# Counters the page shows as totals (the names /metrics exposes, without _total).
COUNTERS = (
    "corral:request_success",
    "corral:request_rejected",
    "corral:prompt_tokens",
    "corral:generation_tokens",
    "corral:num_preemptions",
    "corral:prefix_cache_queries",
    "corral:prefix_cache_hits",
    "corral:kv_swap_outs",
    "corral:kv_host_tier_loads",
    "corral:kv_disk_tier_reads",
)
GAUGES = (
    "corral:num_requests_running",
    "corral:num_requests_waiting",
    "corral:kv_cache_usage_perc",
)
HISTOGRAMS = (
    "corral:time_to_first_token_seconds",
    "corral:time_per_output_token_seconds",
    "corral:e2e_request_latency_seconds",
)
SLO_PREFIX = "corral:slo_"


@dataclass
class Reading:
    """The registry at one moment: counter totals (summed over labels), gauges, histograms as
    (upper bounds, cumulative counts, sum), and per-class SLO series."""

    time_s: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[list[float], list[float], float]] = field(default_factory=dict)
    slo: dict[str, dict[str, float]] = field(default_factory=dict)


def read_registry(registry: CollectorRegistry, time_s: float) -> Reading:
    reading = Reading(time_s)
    for family in registry.collect():
        name = family.name
        if name in COUNTERS:
            total = sum(s.value for s in family.samples if s.name.endswith("_total"))
            reading.counters[name] = total
        elif name in GAUGES:
            reading.gauges[name] = sum(s.value for s in family.samples)
        elif name in HISTOGRAMS:
            bounds, counts, total = [], [], 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bounds.append(float(sample.labels["le"]))
                    counts.append(sample.value)
                elif sample.name.endswith("_sum"):
                    total = sample.value
            reading.histograms[name] = (bounds, counts, total)
        elif name.startswith(SLO_PREFIX):
            for sample in family.samples:
                slo_class = sample.labels.get("slo_class")
                if slo_class is not None:
                    short = name.removeprefix(SLO_PREFIX)
                    reading.slo.setdefault(slo_class, {})[short] = sample.value
    return reading


def quantile(bounds: list[float], counts: list[float], q: float) -> float | None:
    """The q-quantile of a histogram's observations (cumulative counts per upper bound),
    interpolated linearly inside its bucket; None without observations. Observations in the
    +Inf bucket are reported at the largest finite bound."""
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            width = count - previous_count
            fraction = (rank - previous_count) / width if width > 0 else 1.0
            return previous_bound + fraction * (bound - previous_bound)
        previous_bound, previous_count = bound, count
    return previous_bound


class Windows:
    """Readings of the last max_age_s seconds; rates and quantiles over a trailing window."""

    def __init__(self, max_age_s: float = 600.0) -> None:
        self.max_age_s = max_age_s
        self._readings: deque[Reading] = deque()

    def add(self, reading: Reading) -> None:
        self._readings.append(reading)
        while self._readings and reading.time_s - self._readings[0].time_s > self.max_age_s:
            self._readings.popleft()

    def _before(self, window_s: float) -> Reading | None:
        latest = self._readings[-1]
        for reading in self._readings:
            if latest.time_s - reading.time_s <= window_s:
                return reading if reading is not latest else None
        return None

    def summary(self, window_s: float) -> dict[str, Any]:
        """Token throughput, request rate, and TTFT/TPOT/E2E p50 and p99 (seconds) over the
        trailing window_s (None where nothing was observed in it)."""
        latest = self._readings[-1]
        earlier = self._before(window_s)
        out: dict[str, Any] = {"window_s": window_s}
        if earlier is None:
            return out
        elapsed = latest.time_s - earlier.time_s

        def rate(name: str) -> float:
            return (latest.counters.get(name, 0.0) - earlier.counters.get(name, 0.0)) / elapsed

        out["generation_tokens_per_s"] = rate("corral:generation_tokens")
        out["prompt_tokens_per_s"] = rate("corral:prompt_tokens")
        out["requests_per_s"] = rate("corral:request_success")
        for name, key in (
            ("corral:time_to_first_token_seconds", "ttft"),
            ("corral:time_per_output_token_seconds", "tpot"),
            ("corral:e2e_request_latency_seconds", "e2e"),
        ):
            if name not in latest.histograms:
                continue
            bounds, now_counts, _ = latest.histograms[name]
            before = earlier.histograms.get(name, (bounds, [0.0] * len(bounds), 0.0))[1]
            delta = [a - b for a, b in zip(now_counts, before)]
            out[f"{key}_p50_s"] = quantile(bounds, delta, 0.5)
            out[f"{key}_p99_s"] = quantile(bounds, delta, 0.99)
        return out
