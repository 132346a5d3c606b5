"""PNG plots of a simulation: KV usage over time per instance, and latency CDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corral.sim.report import SimReport
from corral.workloads.metrics import RequestRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: SimReport, records: list[RequestRecord], out_dir: str | Path) -> list[Path]:
    """Write kv_usage.png and latency_cdf.png into out_dir; returns their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    figure, axis = plt.subplots(figsize=(8, 4))
    for instance in report.instances[:16]:
        if instance.kv_samples:
            times, usage = zip(*instance.kv_samples)
            axis.plot(times, np.array(usage) * 100, linewidth=0.8, label=f"#{instance.index}")
    axis.set_xlabel("simulated time (s)")
    axis.set_ylabel("KV blocks in use (%)")
    axis.set_title("KV cache usage per instance (first 16)")
    if len(report.instances) <= 8:
        axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(out / "kv_usage.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    done = [record for record in records if record.is_ok]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    series = {
        "TTFT": [record.ttft_s * 1e3 for record in done],
        "TPOT": [t * 1e3 for record in done if (t := record.tpot_s) is not None],
    }
    for axis, (name, values) in zip(axes, series.items()):
        values = np.sort(np.asarray(values))
        if values.size:
            axis.plot(values, np.arange(1, values.size + 1) / values.size)
        axis.set_xlabel(f"{name} (ms)")
        axis.set_ylabel("fraction of requests")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    paths.append(out / "latency_cdf.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    return paths
