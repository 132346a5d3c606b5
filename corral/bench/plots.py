"""PNG figures (matplotlib, Agg backend): latency CDFs and the run's timeline for `bench serve`,
the throughput-latency curve and goodput for `bench sweep`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corral.bench.report import ServeReport
from corral.bench.timeline import default_bin_s, in_flight, output_throughput


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cdf_points(values: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(x, fraction <= x) of sorted values; beyond max_points, that many quantiles (so a figure
    of a million gaps stays small)."""
    if values.size <= max_points:
        return values, np.arange(1, values.size + 1) / values.size
    fractions = np.linspace(0.0, 1.0, max_points)
    return np.quantile(values, fractions), fractions


def _cdf(axis: Any, values_ms: Sequence[float], name: str, unit: str = "requests") -> None:
    values = np.sort(np.asarray(values_ms, dtype=np.float64))
    if values.size:
        xs, ys = cdf_points(values)
        axis.step(xs, ys, where="post")
        for q, style in ((50, ":"), (99, "--")):
            axis.axvline(np.percentile(values, q), color="grey", linestyle=style, linewidth=0.8)
    else:
        axis.text(0.5, 0.5, "no data", ha="center", transform=axis.transAxes)
    axis.set_xlabel(f"{name} (ms)")
    axis.set_ylabel(f"fraction of {unit}")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)


def _save(figure: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    pyplot().close(figure)
    return target


def latency_cdf_figure(report: ServeReport, title: str) -> Any:
    """TTFT, TPOT, ITL and E2E CDFs of completed requests (dotted: median, dashed: p99)."""
    plt = pyplot()
    done = [record.record for record in report.run.records if record.record.is_ok]
    series = {
        "TTFT": [r.ttft_s * 1e3 for r in done],
        "TPOT": [t * 1e3 for r in done if (t := r.tpot_s) is not None],
        "ITL": [g * 1e3 for r in done for g in np.diff(np.asarray(r.token_times_s))],
        "E2E latency": [r.e2e_s * 1e3 for r in done],
    }
    figure, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for axis, (name, values) in zip(axes.flat, series.items()):
        _cdf(axis, values, name, "gaps between chunks" if name == "ITL" else "requests")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_latency_cdfs(report: ServeReport, path: Path, title: str) -> Path:
    return _save(latency_cdf_figure(report, title), path)


def timeline_figure(report: ServeReport, title: str) -> Any:
    """Output token throughput per time bin, and requests in flight, over the run."""
    plt = pyplot()
    records = report.run.records
    duration = max(report.run.duration_s, 1e-3)
    bin_s = default_bin_s(duration)
    starts, rates = output_throughput(records, duration, bin_s)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.bar(starts, rates, width=bin_s, align="edge", alpha=0.8)
    top.axhline(report.summary.output_throughput, color="black", linestyle="--", linewidth=0.8)
    top.set_ylabel(f"output tokens/s ({bin_s:.2g} s bins)")
    top.grid(alpha=0.3)
    times, counts = in_flight(records)
    bottom.step(times, counts, where="post", label="in flight")
    sends = [r.record.arrival_time_s for r in records if r.is_sent]
    bottom.plot(sends, np.zeros(len(sends)), "|", color="tab:red", label="sent")
    failures = [r.end_time_s for r in records if r.is_sent and not r.record.is_ok]
    if failures:
        bottom.plot(failures, np.zeros(len(failures)), "x", color="black", label="failed")
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylabel("requests in flight")
    bottom.legend(fontsize=8, loc="upper right")
    bottom.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_timeline(report: ServeReport, path: Path, title: str) -> Path:
    return _save(timeline_figure(report, title), path)


def plot_serve(report: ServeReport, out_dir: str | Path, title: str) -> list[Path]:
    """Write latency_cdf.png and timeline.png into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_latency_cdfs(report, out / "latency_cdf.png", title),
        plot_timeline(report, out / "timeline.png", title),
    ]


def plot_sweep(points: Sequence[Any], path: str | Path, title: str) -> Path:
    """One PNG of sweep_figure."""
    return _save(sweep_figure(points, title), path)


def sweep_figure(points: Sequence[Any], title: str) -> Any:
    """TTFT and TPOT (median, p99) against output throughput, and goodput and request
    throughput against the offered load (sweep.SweepPoint list, in sweep order)."""
    plt = pyplot()
    summaries = [point.report.summary for point in points]
    throughput = [s.output_throughput for s in summaries]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for axis, metric in zip(axes[:2], ("ttft", "tpot")):
        for stat, style in (("median_ms", "o-"), ("p99_ms", "s--")):
            values = [getattr(getattr(s, metric), stat) for s in summaries]
            values = [np.nan if v is None else v for v in values]
            axis.plot(throughput, values, style, label=f"{metric.upper()} {stat[:-3]}")
        for point, x, s in zip(points, throughput, summaries):
            y = getattr(s, metric).p99_ms
            if y is not None:
                axis.annotate(
                    f"{point.value:g}",
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        axis.set_xlabel("output throughput (tokens/s)")
        axis.set_ylabel(f"{metric.upper()} (ms)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    loads = [point.value for point in points]
    kind = points[0].kind if points else "request_rate"
    goodput = [np.nan if s.goodput is None else s.goodput for s in summaries]
    third = axes[2]
    third.plot(loads, [s.request_throughput for s in summaries], "o-", label="completed req/s")
    third.plot(loads, goodput, "s-", label=f"goodput ({summaries[0].slo if summaries else ''})")
    if kind == "request_rate":
        third.plot(loads, loads, ":", color="grey", label="offered")
        third.set_xlabel("offered request rate (req/s)")
    else:
        third.set_xlabel("max concurrency")
    third.set_ylabel("requests/s")
    third.grid(alpha=0.3)
    third.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
