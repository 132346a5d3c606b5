"""Sweeps: one workload at several request rates (or concurrency limits), one report per point.

Request rates reshape the arrivals. With trace arrivals (the Azure replays), the trace's own
timestamps are kept and only compressed or stretched: time_scale = (trace's mean rate) / rate,
so the trace's burstiness survives. Otherwise the arrivals are Poisson (or gamma with
--burstiness-cv) at the rate. Concurrency limits send everything at once behind
--max-concurrency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from corral.bench.client import ServeRun
from corral.bench.payload import RequestOptions
from corral.bench.report import ServeReport, build_report
from corral.bench.serve import ServeTarget
from corral.core.slo_target import SLO
from corral.workloads import ArrivalOptions, Workload, WorkloadOptions, build_workload


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One run of a sweep: what was varied and what came out."""

    kind: str  # request_rate | max_concurrency
    value: float
    time_scale: float | None  # trace arrivals only
    report: ServeReport

    def to_dict(self, *, with_records: bool = True) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "time_scale": self.time_scale,
            **self.report.to_dict(with_records=with_records),
        }


def trace_rate(workload: Workload) -> float:
    """Mean arrival rate of a workload's first turns (requests/s over their span)."""
    times = [spec.arrival_time_s for spec in workload if spec.parent_request_id is None]
    span = max(times) - min(times)
    if len(times) < 2 or span <= 0:
        raise ValueError("the trace needs at least two distinct arrival times to be rescaled")
    return (len(times) - 1) / span


def workload_at_rate(options: WorkloadOptions, rate: float) -> tuple[Workload, float | None]:
    """The workload with arrivals at rate requests/s, and the trace time scale used (if any)."""
    if not rate > 0:
        raise ValueError(f"request rates must be > 0, got {rate}")
    arrival = options.arrival
    is_trace = arrival.kind == "trace" if arrival is not None else None
    if is_trace is None:  # the dataset's default: trace for timed datasets
        natural = build_workload(options)
        is_trace = natural.description.get("arrival") == "trace"
    if is_trace:
        natural = build_workload(replace(options, arrival=ArrivalOptions("trace", time_scale=1.0)))
        time_scale = trace_rate(natural) / rate
        timed = replace(options, arrival=ArrivalOptions("trace", time_scale=time_scale))
        return build_workload(timed), time_scale
    kind = arrival.kind if arrival is not None and arrival.kind == "gamma" else "poisson"
    cv = arrival.cv if arrival is not None else 1.0
    return build_workload(replace(options, arrival=ArrivalOptions(kind, rate=rate, cv=cv))), None


RunPoint = Callable[[Workload, ServeTarget], ServeReport]


def run_sweep(
    options: WorkloadOptions,
    target: ServeTarget,
    run_point: RunPoint,
    *,
    request_rates: Sequence[float] = (),
    concurrencies: Sequence[int] = (),
    on_point: Callable[[SweepPoint], None] | None = None,
) -> list[SweepPoint]:
    """Run run_point once per rate (or per concurrency limit); exactly one list may be given."""
    if bool(request_rates) == bool(concurrencies):
        raise ValueError("give exactly one of --request-rates and --concurrencies")
    points = []
    for rate in request_rates:
        workload, time_scale = workload_at_rate(options, rate)
        point = SweepPoint("request_rate", rate, time_scale, run_point(workload, target))
        points.append(point)
        if on_point is not None:
            on_point(point)
    for limit in concurrencies:
        workload = build_workload(replace(options, arrival=ArrivalOptions("burst")))
        report = run_point(workload, replace(target, max_concurrency=limit))
        point = SweepPoint("max_concurrency", limit, None, report)
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def pool_repeats(
    repeats: Sequence[Sequence[SweepPoint]], slo: SLO | None, *, force_output_len: bool = True
) -> list[SweepPoint]:
    """One point per load whose report pools the records of every repeat at that load (their
    durations add up, so throughputs and goodput are averages over the repeats)."""
    pooled = []
    for same_load in zip(*repeats):
        runs = [point.report.run for point in same_load]
        run = ServeRun(
            [record for one in runs for record in one.records],
            sum(one.duration_s for one in runs),
            max(one.max_in_flight for one in runs),
        )
        first = same_load[0]
        specs = [p.report.spec_decode for p in same_load if p.report.spec_decode is not None]
        spec = sum(specs[1:], specs[0]) if specs and len(specs) == len(same_load) else None
        report = build_report(run, slo, force_output_len=force_output_len, spec_decode=spec)
        pooled.append(SweepPoint(first.kind, first.value, first.time_scale, report))
    return pooled


def http_point_runner(options: RequestOptions, slo: SLO | None) -> RunPoint:
    """A RunPoint that sends over HTTP with run_serve_benchmark."""
    from corral.bench.serve import run_serve_benchmark

    def run_point(workload: Workload, target: ServeTarget) -> ServeReport:
        report, _ = run_serve_benchmark(workload, options, target, slo)
        return report

    return run_point


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_sweep(points: Sequence[SweepPoint]) -> str:
    """One line per point: offered load, throughputs, goodput, TTFT and TPOT median/p99."""
    header = (
        f"{'load':>12}{'req/s':>8}{'out tok/s':>11}{'goodput':>9}{'TTFT p50':>10}{'p99':>8}"
        f"{'TPOT p50':>10}{'p99':>8}{'failed':>8}"
    )
    lines = [header]
    for point in points:
        s = point.report.summary
        load = f"{point.value:g} req/s" if point.kind == "request_rate" else f"conc {point.value:g}"
        goodput = "-" if s.goodput is None else f"{s.goodput:.3f}"
        lines.append(
            f"{load:>12}{s.request_throughput:>8.3f}{s.output_throughput:>11.1f}{goodput:>9}"
            f"{_ms(s.ttft.median_ms):>10}{_ms(s.ttft.p99_ms):>8}{_ms(s.tpot.median_ms):>10}"
            f"{_ms(s.tpot.p99_ms):>8}{s.num_failed:>8}"
        )
    return "\n".join(lines)
