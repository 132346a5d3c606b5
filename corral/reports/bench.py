"""HTML reports of `corral bench serve` (summary, latency CDFs, throughput over time) and
`corral bench sweep` (one row per load, latency against throughput, goodput against load)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corral.bench.report import ServeReport
from corral.reports import html

_METADATA_KEYS = ("date", "corral_version", "base_url", "endpoint", "model", "workload")


def _metadata(metadata: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, metadata[key]) for key in _METADATA_KEYS if metadata.get(key) not in (None, "")]


def _client_table(report: ServeReport) -> str:
    mean, p99, peak = report.send_delay_ms
    sources = ", ".join(f"{name} {count}" for name, count in sorted(report.token_sources.items()))
    rows: list[tuple[str, str]] = [
        ("Output tokens counted from", sources or "-"),
        ("Outputs not of the forced length", str(report.num_wrong_length)),
        ("Send delay vs plan (ms) mean / p99 / max", f"{mean:.1f} / {p99:.1f} / {peak:.1f}"),
        ("Max requests in flight", str(report.run.max_in_flight)),
    ]
    spec = report.spec_decode
    if spec is not None:
        rate, length = spec.acceptance_rate, spec.mean_accepted_length
        rows += [
            ("Spec decode acceptance rate", html.number(rate, ".3f")),
            ("Spec decode mean accepted length", html.number(length, ".2f")),
            ("Spec decode drafts / draft tokens", f"{spec.num_drafts} / {spec.num_draft_tokens}"),
        ]
    return html.table(["client", "value"], rows)


def serve_page(report: ServeReport, title: str, metadata: dict[str, Any] | None = None) -> str:
    """The page of one `bench serve` run; metadata: the JSON document's run metadata."""
    from corral.bench import plots

    sections = [
        html.section("Summary", html.summary_tables(report.summary), _client_table(report)),
        html.section(
            "Latency distributions",
            html.figure(
                lambda: plots.latency_cdf_figure(report, title),
                "CDFs of TTFT, TPOT, inter-chunk gaps (ITL) and end-to-end latency over the "
                "completed requests; dotted: median, dashed: p99.",
            ),
        ),
        html.section(
            "Throughput over time",
            html.figure(
                lambda: plots.timeline_figure(report, title),
                "Output tokens/s per time bin (dashed: the run's mean) and requests in flight.",
            ),
        ),
    ]
    return html.page(title, sections, _metadata(metadata or {}))


def _point_row(point: Any) -> list[str]:
    summary = point.report.summary
    attainment = "-"
    if summary.num_slo_met is not None and summary.num_completed:
        attainment = f"{summary.num_slo_met / summary.num_completed:.1%}"
    return [
        f"{point.value:g}",
        f"{summary.num_completed} / {summary.num_failed}",
        html.number(summary.request_throughput, ".3f"),
        html.number(summary.goodput, ".3f"),
        attainment,
        html.number(summary.output_throughput),
        html.number(summary.ttft.median_ms),
        html.number(summary.ttft.p99_ms),
        html.number(summary.tpot.median_ms),
        html.number(summary.tpot.p99_ms),
        html.number(summary.e2e.p99_ms),
    ]


def sweep_page(points: Sequence[Any], title: str, metadata: dict[str, Any] | None = None) -> str:
    """The page of a `bench sweep` (sweep.SweepPoint list, in sweep order)."""
    from corral.bench import plots

    kind = points[0].kind if points else "request_rate"
    load = "request rate (req/s)" if kind == "request_rate" else "max concurrency"
    headers = [
        load,
        "completed / failed",
        "req/s",
        "goodput (req/s)",
        "SLO attainment",
        "output tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "E2E p99",
    ]
    slo = points[0].report.summary.slo if points else "none"
    sections = [
        html.section(
            "Summary per load",
            html.table(headers, [_point_row(p) for p in points], caption=f"SLO: {slo}; ms"),
        ),
        html.section(
            "Goodput and latency against load",
            html.figure(
                lambda: plots.sweep_figure(points, title),
                "TTFT and TPOT (median, p99) against output throughput, each point labelled "
                "with its load; completed requests/s and goodput against the offered load.",
            ),
        ),
    ]
    for point in points:
        label = f"{point.kind.replace('_', ' ')} {point.value:g}"
        sections.append(html.section(f"Load: {label}", html.summary_tables(point.report.summary)))
    return html.page(title, sections, _metadata(metadata or {}))


def write_serve_html(
    path: str | Path, report: ServeReport, title: str, metadata: dict[str, Any] | None = None
) -> Path:
    return html.write(path, serve_page(report, title, metadata))


def write_sweep_html(
    path: str | Path, points: Sequence[Any], title: str, metadata: dict[str, Any] | None = None
) -> Path:
    return html.write(path, sweep_page(points, title, metadata))
