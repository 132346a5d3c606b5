"""Self-contained HTML reports: one file, no scripts, nothing fetched from the network. Figures
are matplotlib figures inlined as SVG; without matplotlib a page has its tables only and says so.

The pieces (tables, figures, sections) are plain strings of HTML; page() puts them together."""

from __future__ import annotations

import html
import importlib.util
import io
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from corral.workloads.metrics import LatencyStats, MetricsSummary

NO_MATPLOTLIB_NOTE = (
    "matplotlib is not installed (pip install 'corral[bench]'), so this report has its tables "
    "and no figures."
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
svg { max-width: 100%; height: auto; }
.note { background: #fff6d6; border: 1px solid #e6d28a; padding: 0.5em 1em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
"""

_figure_ids = itertools.count()


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: float | int | None, spec: str = ".2f") -> str:
    """A cell: '-' for None, else the value formatted as the text reports format it."""
    if value is None:
        return "-"
    return format(value, spec)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """An HTML table; cells are escaped (format numbers before passing them)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def definitions(items: Iterable[tuple[str, Any]]) -> str:
    """A <dl> of (name, value) pairs, e.g. a run's metadata (dicts and lists shown as JSON)."""

    def text(value: Any) -> str:
        if isinstance(value, (dict, list)):
            return json.dumps(value, default=str)
        return str(value)

    return (
        "<dl>"
        + "".join(f"<dt>{escape(name)}</dt><dd>{escape(text(v))}</dd>" for name, v in items)
        + "</dl>"
    )


def section(heading: str, *parts: str) -> str:
    return f"<section>\n<h2>{escape(heading)}</h2>\n" + "\n".join(parts) + "\n</section>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def figure_svg(figure: Any) -> str:
    """The figure as an inline <svg> element (text kept as text, ids made unique in the page,
    no XML prolog, namespace URLs or metadata); closes the figure."""
    import matplotlib
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    try:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "corral"}):
            figure.savefig(buffer, format="svg", metadata={"Date": None})
    finally:
        plt.close(figure)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    prefix = f"f{next(_figure_ids)}-"
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', text)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", text)


def figure(build: Any, caption: str) -> str:
    """build(): a matplotlib figure, called only when matplotlib is installed; the <figure>
    with its SVG and caption (or nothing without matplotlib: the page says so once)."""
    if not has_matplotlib():
        return ""
    return f"<figure>\n{figure_svg(build())}\n<figcaption>{escape(caption)}</figcaption></figure>"


def _latency_row(name: str, stats: LatencyStats) -> list[str]:
    cells = (stats.mean_ms, stats.median_ms, stats.p90_ms, stats.p99_ms, stats.max_ms)
    return [name, *(number(v) for v in cells), str(stats.count)]


def summary_tables(summary: MetricsSummary) -> str:
    """The numbers of corral.workloads.metrics.format_summary as two tables (same formats)."""
    rows: list[tuple[str, str]] = [
        ("Requests completed / failed", f"{summary.num_completed} / {summary.num_failed}"),
        ("Duration (s)", number(summary.duration_s)),
        (
            "Total input / output tokens",
            f"{summary.total_input_tokens} / {summary.total_output_tokens}",
        ),
        ("Request throughput (req/s)", number(summary.request_throughput, ".3f")),
        ("Input token throughput (tok/s)", number(summary.input_throughput)),
        ("Output token throughput (tok/s)", number(summary.output_throughput)),
        ("Total token throughput (tok/s)", number(summary.total_token_throughput)),
        ("SLO", summary.slo),
    ]
    if summary.goodput is not None and summary.num_slo_met is not None:
        attainment = summary.num_slo_met / summary.num_completed if summary.num_completed else 0
        rows += [
            ("Goodput (req/s)", number(summary.goodput, ".3f")),
            (
                "SLO attainment",
                f"{attainment:.1%} ({summary.num_slo_met}/{summary.num_completed})",
            ),
        ]
    latency = table(
        ["(ms)", "mean", "median", "p90", "p99", "max", "count"],
        [
            _latency_row(name.upper(), getattr(summary, name))
            for name in ("ttft", "tpot", "itl", "e2e")
        ],
        caption="Latency percentiles (ms)",
    )
    parts = [table(["metric", "value"], rows), latency]
    if summary.errors:
        ranked = sorted(summary.errors.items(), key=lambda item: (-item[1], item[0]))
        parts.append(table(["error", "count"], ranked[:20], caption="Errors (most frequent)"))
    return "\n".join(parts)


def page(title: str, sections: Sequence[str], metadata: Iterable[tuple[str, Any]] = ()) -> str:
    """The whole document: title, the run's metadata, a note when figures are missing, the
    sections in order."""
    head_notes = "" if has_matplotlib() else note(NO_MATPLOTLIB_NOTE)
    meta = definitions(metadata)
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{meta}\n{head_notes}\n{body}\n</body>\n</html>\n"
    )


def write(path: str | Path, document: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document, encoding="utf-8")
    return target


def html_path(json_path: str | None, html_out: str | None, disabled: bool) -> str | None:
    """Where a command writes its HTML report: --html-out, else beside --result-json (same
    name, .html); None when --no-html or neither is given."""
    if disabled:
        return None
    if html_out:
        return html_out
    if json_path:
        return str(Path(json_path).with_suffix(".html"))
    return None
