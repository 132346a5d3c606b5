"""Sweeps (rates reshape the arrivals; one report per point), the timeline series behind the
plots, and the PNGs themselves."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from corral.bench.client import ServeClient
from corral.bench.payload import RequestOptions
from corral.bench.plots import plot_serve, plot_sweep
from corral.bench.report import build_report
from corral.bench.serve import ServeTarget
from corral.bench.sweep import (
    format_sweep,
    pool_repeats,
    run_sweep,
    trace_rate,
    workload_at_rate,
)
from corral.bench.timeline import in_flight, output_throughput
from corral.core.slo_target import SLO
from corral.workloads import ArrivalOptions, WorkloadOptions, build_workload
from tests.bench.scripted import (
    ScriptedTransport,
    VirtualClock,
    run_scripted,
    text_specs,
    token_script,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scripted_point(workload, target: ServeTarget):
    """A sweep point on virtual time: every request takes 0.2 s to its first token, then
    3 more tokens 0.1 s apart."""
    clock = VirtualClock()
    transport = ScriptedTransport(clock, lambda path, body: token_script(0.2, 0.1, 4))
    client = ServeClient(
        workload,
        RequestOptions(model="m"),
        transport,
        max_concurrency=target.max_concurrency,
        clock=clock,
    )
    run = asyncio.run(clock.run(client.run()))
    return build_report(run, SLO(ttft_s=0.25))


def random_options(**changes) -> WorkloadOptions:
    return WorkloadOptions(dataset="random", num_requests=40, input_len=4, output_len=4, **changes)


def test_rates_become_poisson_arrivals_and_concurrencies_become_limits(tmp_path):
    target = ServeTarget("http://unused:1", show_progress=False)
    points = run_sweep(random_options(), target, scripted_point, request_rates=[2.0, 8.0])
    assert [p.value for p in points] == [2.0, 8.0] and points[0].time_scale is None
    for point in points:
        first = point.report.run.records[0].record.arrival_time_s
        assert first == 0.0
        assert point.report.summary.num_completed == 40
        assert point.report.summary.ttft.max_ms == pytest.approx(200)
        assert point.report.summary.goodput == pytest.approx(
            point.report.summary.request_throughput
        )
    assert points[1].report.run.duration_s < points[0].report.run.duration_s
    limited = run_sweep(random_options(), target, scripted_point, concurrencies=[1, 4])
    assert [p.report.run.max_in_flight for p in limited] == [1, 4]
    # One request at a time, 0.5 s each: 40 requests take 20 s.
    assert limited[0].report.run.duration_s == pytest.approx(20.0)
    table = format_sweep(points + limited)
    assert len(table.splitlines()) == 5 and "conc 4" in table and "8 req/s" in table
    path = plot_sweep(points, tmp_path / "sweep.png", "sweep")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="exactly one"):
        run_sweep(random_options(), target, scripted_point)
    with pytest.raises(ValueError, match="> 0"):
        workload_at_rate(random_options(), 0.0)


def test_trace_rates_rescale_the_trace_timestamps():
    options = WorkloadOptions(dataset="azure-conv", num_requests=50, length_scale=0.01)
    try:
        natural = build_workload(options)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    natural_rate = trace_rate(natural)
    workload, time_scale = workload_at_rate(options, 4.0)
    assert time_scale == pytest.approx(natural_rate / 4.0)
    assert trace_rate(workload) == pytest.approx(4.0)
    gaps = np.diff([s.arrival_time_s for s in workload])
    natural_gaps = np.diff([s.arrival_time_s for s in natural])
    assert gaps == pytest.approx(natural_gaps * time_scale)  # the trace's shape is kept
    gamma, scale = workload_at_rate(
        WorkloadOptions(dataset="random", num_requests=50, arrival=ArrivalOptions("gamma", cv=2.0)),
        4.0,
    )
    assert scale is None and trace_rate(gamma) == pytest.approx(4.0, rel=0.35)


def test_timeline_series_and_serve_plots(tmp_path):
    # r0 at 0 s, r1 at 1 s; 4 tokens each at +0.2, +0.3, +0.4, +0.5 s.
    run, _ = run_scripted(text_specs([0.0, 1.0]), lambda p, b: token_script(0.2, 0.1, 4))
    starts, rates = output_throughput(run.records, run.duration_s, 0.5)
    assert starts == pytest.approx([0.0, 0.5, 1.0])
    # Tokens at 0.2, 0.3, 0.4 | 0.5 | 1.2, 1.3, 1.4, 1.5 (the last bin ends at 1.5 inclusive).
    assert rates == pytest.approx([6.0, 2.0, 8.0])
    times, counts = in_flight(run.records)
    assert list(counts) == [0, 1, 0, 1, 0]
    assert times == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])
    paths = plot_serve(build_report(run), tmp_path / "plots", "scripted")
    assert [p.name for p in paths] == ["latency_cdf.png", "timeline.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_repeats_pool_their_records_and_durations():
    target = ServeTarget("http://unused:1", show_progress=False)
    options = random_options(arrival=ArrivalOptions("poisson", rate=4.0))
    repeats = [run_sweep(options, target, scripted_point, request_rates=[2.0, 4.0])] * 2
    pooled = pool_repeats(repeats, SLO(ttft_s=0.25))
    assert [p.value for p in pooled] == [2.0, 4.0]
    for point, first in zip(pooled, repeats[0]):
        run = point.report.run
        assert len(run.records) == 80
        assert run.duration_s == pytest.approx(2 * first.report.run.duration_s)
        summary = point.report.summary
        assert summary.num_slo_met == 80
        assert summary.goodput == pytest.approx(first.report.summary.goodput)
        assert summary.request_throughput == pytest.approx(80 / run.duration_s)
    assert "records" not in pooled[0].to_dict(with_records=False)
