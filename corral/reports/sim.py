"""HTML report of `corral simulate run`: the request metrics `corral bench` reports, the
per-instance table, and what only a simulator sees over time (KV usage, waiting and running
requests per instance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.reports import html
from corral.sim.report import SimReport
from corral.workloads.metrics import RequestRecord

MAX_INSTANCE_ROWS = 64


def _totals(report: SimReport) -> str:
    rows: list[tuple[str, str]] = [
        ("Instances", str(len(report.instances))),
        ("Simulated duration (s)", html.number(report.duration_s)),
        ("Cost (USD)", html.number(report.cost_usd)),
        ("Energy (kWh)", html.number(report.energy_kwh, ".3f")),
        ("Events", str(report.num_events)),
        ("Wall time (s)", html.number(report.wall_time_s)),
        ("Simulated requests per wall-second", f"{report.simulated_requests_per_wall_s:.0f}"),
    ]
    spec = report.spec_decode
    if spec is not None:
        rows += [
            ("Spec decode acceptance rate", f"{spec.acceptance_rate:.1%}"),
            ("Spec decode mean accepted length", f"{spec.mean_accepted_length:.2f}"),
        ]
    scale = report.autoscale
    if scale is not None:
        rows += [
            ("Autoscaling", scale.spec),
            ("Replicas max / mean", f"{scale.max_replicas} / {scale.mean_replicas:.2f}"),
            ("Scale-ups / scale-downs", f"{scale.num_scale_ups} / {scale.num_scale_downs}"),
            ("Instance-seconds", f"{scale.instance_seconds:.1f}"),
        ]
    return html.table(["simulation", "value"], rows)


def _instances_table(report: SimReport) -> str:
    headers = [
        "instance",
        "label",
        "role",
        "requests",
        "steps",
        "utilization",
        "KV mean",
        "KV max",
        "preemptions",
        "prefix hit rate",
    ]
    rows = [
        [
            str(i.index),
            i.label,
            i.role,
            str(i.num_assigned),
            str(i.num_steps),
            f"{i.utilization:.1%}",
            f"{i.mean_kv_usage:.1%}",
            f"{i.max_kv_usage:.1%}",
            str(i.num_preemptions),
            "-" if i.prefix_hit_rate is None else f"{i.prefix_hit_rate:.1%}",
        ]
        for i in report.instances[:MAX_INSTANCE_ROWS]
    ]
    more = len(report.instances) - MAX_INSTANCE_ROWS
    caption = f"first {MAX_INSTANCE_ROWS} of {len(report.instances)}" if more > 0 else ""
    return html.table(headers, rows, caption=caption)


def sim_page(
    report: SimReport,
    records: list[RequestRecord],
    title: str,
    metadata: dict[str, Any] | None = None,
) -> str:
    """The page of one `simulate run`; records: the simulated requests (for the CDFs and the
    throughput over time); metadata: e.g. the workload and the cost model, shown at the top."""
    from corral.sim import plots

    sections = [
        html.section("Summary", html.summary_tables(report.summary), _totals(report)),
        html.section("Instances", _instances_table(report)),
        html.section(
            "Latency distributions",
            html.figure(
                lambda: plots.latency_cdf_figure(records),
                "CDFs of TTFT and TPOT over the completed requests.",
            ),
        ),
        html.section(
            "Throughput over time",
            html.figure(
                lambda: plots.throughput_figure(records),
                "Output tokens/s per bin of simulated time (dashed: the mean), and arrivals.",
            ),
        ),
    ]
    if any(i.kv_samples for i in report.instances):
        sections.append(
            html.section(
                "KV cache usage over time",
                html.figure(
                    lambda: plots.kv_usage_figure(report),
                    "Fraction of each instance's KV blocks in use, sampled at step starts.",
                ),
            )
        )
    if any(i.queue_samples for i in report.instances):
        sections.append(
            html.section(
                "Queue length over time",
                html.figure(
                    lambda: plots.queue_figure(report),
                    "Waiting and running requests per instance, sampled with the KV usage.",
                ),
            )
        )
    items = [(key, value) for key, value in (metadata or {}).items() if value not in (None, "")]
    return html.page(title, sections, items)


def write_sim_html(
    path: str | Path,
    report: SimReport,
    records: list[RequestRecord],
    title: str,
    metadata: dict[str, Any] | None = None,
) -> Path:
    return html.write(path, sim_page(report, records, title, metadata))
