"""The dashboard's numbers come from the metrics registry (corral/serve/dashboard/readings.py):
totals equal what /metrics renders, and windowed percentiles come from bucket deltas."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.engine.request_stats import FinishedRequestStats, IterationStats
from corral.serve.dashboard.frame_routes import finite
from corral.serve.dashboard.readings import Windows, quantile, read_registry
from corral.serve.metrics import ServerMetrics


def _finished(reason: str, e2e_s: float) -> FinishedRequestStats:
    return FinishedRequestStats(reason, e2e_s, 0.01, 0.02, 5, 7)


def _rendered_totals(metrics: ServerMetrics) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render(True).decode()):
        for sample in family.samples:
            if sample.name.startswith("corral:") and sample.name.endswith("_total"):
                name = sample.name.removesuffix("_total")
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def test_counters_equal_what_metrics_renders():
    metrics = ServerMetrics("m")
    metrics.observe(
        IterationStats(
            None,
            num_prompt_tokens=11,
            num_generation_tokens=23,
            time_to_first_tokens_s=[0.05, 0.2],
            finished=[_finished("stop", 1.0), _finished("length", 2.0)],
        )
    )
    metrics.count_rejected(type("E", (), {"status_code": 400})())
    reading = read_registry(metrics.registry, 1.0)
    rendered = _rendered_totals(metrics)
    for name, value in reading.counters.items():
        assert value == rendered.get(name, 0.0), name
    assert reading.counters["corral:request_success"] == 2
    assert reading.counters["corral:generation_tokens"] == 23
    assert reading.counters["corral:request_rejected"] == 1


def test_quantile_interpolates_inside_the_bucket():
    bounds = [0.1, 0.2, 0.4, math.inf]
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [10, 10, 10, 10], 0.5) == pytest.approx(0.05)
    assert quantile(bounds, [0, 10, 20, 20], 0.75) == pytest.approx(0.3)
    assert quantile(bounds, [0, 0, 0, 4], 0.99) == 0.4  # the +Inf bucket: its lower bound


def test_windows_count_only_what_happened_inside_them():
    metrics = ServerMetrics("m")
    windows = Windows()
    metrics.observe(IterationStats(None, num_generation_tokens=100, time_to_first_tokens_s=[5.0]))
    windows.add(read_registry(metrics.registry, 0.0))
    metrics.observe(IterationStats(None, time_to_first_tokens_s=[0.01] * 9))
    windows.add(read_registry(metrics.registry, 5.0))
    metrics.observe(IterationStats(None, num_generation_tokens=50))
    windows.add(read_registry(metrics.registry, 10.0))
    recent = windows.summary(5.0)
    assert recent["generation_tokens_per_s"] == pytest.approx(10.0)
    assert recent["ttft_p50_s"] is None  # no first token in the last 5 s
    longer = windows.summary(10.0)
    assert longer["generation_tokens_per_s"] == pytest.approx(5.0)
    assert longer["ttft_p99_s"] <= 0.025  # the 9 fast ones, not the slow one before the window


def test_frames_carry_no_nan_or_infinity():
    assert finite({"a": [1.0, math.inf, math.nan], "b": {"c": -math.inf}}) == {
        "a": [1.0, None, None],
        "b": {"c": None},
    }
