"""Plots of a simulation (matplotlib, Agg backend): KV usage and queue length over time per
instance, and latency CDFs. The *_figure functions return figures (the HTML report embeds them);
plot_report writes PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from corral.bench.plots import cdf_points
from corral.sim.report import SimReport
from corral.workloads.metrics import RequestRecord

MAX_INSTANCES_PLOTTED = 16


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kv_usage_figure(report: SimReport) -> Any:
    """KV blocks in use (%) against simulated time, one line per instance (the first 16)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    for instance in report.instances[:MAX_INSTANCES_PLOTTED]:
        if instance.kv_samples:
            times, usage = zip(*instance.kv_samples)
            axis.plot(times, np.array(usage) * 100, linewidth=0.8, label=f"#{instance.index}")
    axis.set_xlabel("simulated time (s)")
    axis.set_ylabel("KV blocks in use (%)")
    axis.set_title(f"KV cache usage per instance (first {MAX_INSTANCES_PLOTTED})")
    if len(report.instances) <= 8:
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def queue_figure(report: SimReport) -> Any:
    """Waiting (top) and running (bottom) requests against simulated time, one line per
    instance (the first 16)."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for instance in report.instances[:MAX_INSTANCES_PLOTTED]:
        if instance.queue_samples:
            times, waiting, running = zip(*instance.queue_samples)
            top.step(times, waiting, where="post", linewidth=0.8, label=f"#{instance.index}")
            bottom.step(times, running, where="post", linewidth=0.8, label=f"#{instance.index}")
    top.set_ylabel("waiting requests")
    top.set_title(f"Queue per instance (first {MAX_INSTANCES_PLOTTED})")
    bottom.set_ylabel("running requests")
    bottom.set_xlabel("simulated time (s)")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    if len(report.instances) <= 8:
        top.legend(fontsize=7)
    figure.tight_layout()
    return figure


def latency_cdf_figure(records: list[RequestRecord]) -> Any:
    """TTFT and TPOT CDFs of the completed requests."""
    plt = _pyplot()
    done = [record for record in records if record.is_ok]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    series = {
        "TTFT": [record.ttft_s * 1e3 for record in done],
        "TPOT": [t * 1e3 for record in done if (t := record.tpot_s) is not None],
    }
    for axis, (name, values) in zip(axes, series.items()):
        values = np.sort(np.asarray(values, dtype=np.float64))
        if values.size:
            axis.plot(*cdf_points(values))
        else:
            axis.text(0.5, 0.5, "no data", ha="center", transform=axis.transAxes)
        axis.set_xlabel(f"{name} (ms)")
        axis.set_ylabel("fraction of requests")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def throughput_figure(records: list[RequestRecord], num_bins: int = 60) -> Any:
    """Output tokens/s per time bin over the completed requests (dashed: the run's mean), and
    the requests arriving per bin."""
    plt = _pyplot()
    done = [record for record in records if record.is_ok]
    token_times = np.concatenate(
        [np.asarray(r.token_times_s, dtype=np.float64) for r in done] or [np.empty(0)]
    )
    weights = np.concatenate(
        [np.full(len(r.token_times_s), r.num_output_tokens / len(r.token_times_s)) for r in done]
        or [np.empty(0)]
    )
    arrivals = np.array([r.arrival_time_s for r in records], dtype=np.float64)
    start = float(arrivals.min()) if arrivals.size else 0.0
    end = float(token_times.max()) if token_times.size else start + 1.0
    bin_s = max((end - start) / num_bins, 1e-6)
    edges = start + np.arange(num_bins + 1) * bin_s
    tokens, _ = np.histogram(np.clip(token_times, start, edges[-1]), bins=edges, weights=weights)
    arrived, _ = np.histogram(np.clip(arrivals, start, edges[-1]), bins=edges)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.bar(edges[:-1], tokens / bin_s, width=bin_s, align="edge", alpha=0.8)
    if end > start:
        top.axhline(weights.sum() / (end - start), color="black", linestyle="--", linewidth=0.8)
    top.set_ylabel(f"output tokens/s ({bin_s:.2g} s bins)")
    bottom.bar(edges[:-1], arrived / bin_s, width=bin_s, align="edge", color="tab:orange")
    bottom.set_ylabel("arrivals (req/s)")
    bottom.set_xlabel("simulated time (s)")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_report(report: SimReport, records: list[RequestRecord], out_dir: str | Path) -> list[Path]:
    """Write kv_usage.png and latency_cdf.png into out_dir; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in (
        ("kv_usage.png", kv_usage_figure(report)),
        ("latency_cdf.png", latency_cdf_figure(records)),
    ):
        paths.append(out / name)
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths
