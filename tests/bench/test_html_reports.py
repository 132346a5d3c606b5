"""HTML reports of `corral bench serve`, `bench sweep` and `corral simulate run`: one file beside
the JSON, holding the JSON's summary numbers, its sections, inline SVG figures (when matplotlib
is installed), and nothing fetched from the network."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from corral.bench.report import build_report
from corral.bench.sweep import run_sweep
from corral.cli import main
from corral.reports import html
from corral.reports.bench import serve_page, sweep_page
from corral.reports.html import html_path
from corral.workloads import WorkloadOptions
from tests.bench.scripted import run_scripted, text_specs, token_script
from tests.bench.stub_server import StubServer
from tests.bench.test_sweep_and_plots import scripted_point


class _Checker(HTMLParser):
    """Collects tags and attributes; fails on unbalanced sections/tables/figures."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.open: list[str] = []
        self.headings: list[str] = []
        self.attribute_values: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attribute_values.extend(value or "" for _, value in attrs)
        if tag in ("section", "table", "figure", "svg", "h2"):
            self.open.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("section", "table", "figure", "svg", "h2"):
            assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
            self.open.pop()
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.headings.append(data)


def check_page(text: str, headings: list[str], num_figures: int = 2) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!DOCTYPE html>") and not checker.open
    assert checker.headings[: len(headings)] == headings
    # Nothing loaded: no scripts, no links, no attribute or CSS url pointing at the network
    # (a server's address may appear as text).
    assert not {"script", "link", "iframe", "object"} & set(checker.tags)
    assert not [v for v in checker.attribute_values if re.search(r"https?:|//", v)]
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", text)
    if html.has_matplotlib():
        assert checker.tags.count("svg") == num_figures
    else:
        assert html.NO_MATPLOTLIB_NOTE.split("(")[0] in text
    return checker


def summary_numbers(summary: dict) -> list[str]:
    return [
        f"{summary['output_throughput']:.2f}",
        f"{summary['request_throughput']:.3f}",
        f"{summary['ttft']['p99_ms']:.2f}",
        f"{summary['e2e']['median_ms']:.2f}",
    ]


def test_html_goes_beside_the_json_unless_told_otherwise():
    assert html_path("out/run.json", None, False) == "out/run.html"
    assert html_path("out/run.json", "x/page.html", False) == "x/page.html"
    assert html_path(None, "page.html", False) == "page.html"
    assert html_path("out/run.json", None, True) is None
    assert html_path(None, None, False) is None


def test_serve_page_from_a_scripted_run():
    run, _ = run_scripted(text_specs([0.0, 0.5, 1.0]), lambda p, b: token_script(0.2, 0.1, 4))
    report = build_report(run)
    text = serve_page(report, "scripted <run>", {"model": "m", "base_url": None})
    check_page(text, ["Summary", "Latency distributions", "Throughput over time"])
    assert "scripted &lt;run&gt;" in text  # escaped
    for value in summary_numbers(report.summary.to_dict()):
        assert value in text


def test_sweep_page_has_goodput_against_load():
    from corral.bench.serve import ServeTarget

    options = WorkloadOptions(dataset="random", num_requests=20, input_len=4, output_len=4)
    target = ServeTarget("http://unused:1", show_progress=False)
    points = run_sweep(options, target, scripted_point, request_rates=[2.0, 8.0])
    text = sweep_page(points, "sweep", {})
    sections = ["Summary per load", "Goodput and latency against load", "Load: request rate 2"]
    check_page(text, sections, num_figures=1)
    for point in points:
        assert f"{point.report.summary.goodput:.3f}" in text


@pytest.fixture(scope="module")
def stub():
    server = StubServer().start()
    yield server
    server.stop()


def test_bench_serve_writes_the_html_beside_the_json(stub, tmp_path):
    out = tmp_path / "run.json"
    argv = ["bench", "serve", "--base-url", stub.base_url, "--no-progress", "--dataset", "random"]
    argv += ["--num-requests", "4", "--input-len", "4", "--output-len", "2"]
    assert main([*argv, "--slo", "ttft_ms=1000", "--result-json", str(out)]) == 0
    document = json.loads(out.read_text())
    text = (tmp_path / "run.html").read_text()
    check_page(text, ["Summary", "Latency distributions", "Throughput over time"])
    for value in summary_numbers(document["summary"]):
        assert value in text
    assert "Goodput (req/s)" in text and "SLO attainment" in text
    assert document["base_url"] in text  # the metadata, as text
    assert main([*argv, "--result-json", str(tmp_path / "b.json"), "--no-html"]) == 0
    assert not (tmp_path / "b.html").exists()


def test_simulate_run_writes_the_html_with_kv_and_queue_over_time(tmp_path):
    out = tmp_path / "sim.json"
    argv = ["simulate", "run", "--dataset", "random", "--num-requests", "40", "--input-len", "200"]
    argv += ["--output-len", "20", "--request-rate", "20", "--num-instances", "2"]
    argv += ["--model", "smollm-135m", "--hardware", "a100", "--slo", "ttft_ms=500"]
    assert main([*argv, "--result-json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert all(len(i["queue_samples"]) == len(i["kv_samples"]) for i in document["instances"])
    text = (tmp_path / "sim.html").read_text()
    sections = ["Summary", "Instances", "Latency distributions", "Throughput over time"]
    sections += ["KV cache usage over time", "Queue length over time"]
    check_page(text, sections, num_figures=4)
    for value in summary_numbers(document["summary"]):
        assert value in text
    assert "A100-SXM4-80GB" in text  # the cost model, in the metadata


def test_without_matplotlib_the_page_has_tables_and_says_so(monkeypatch):
    monkeypatch.setattr(html, "has_matplotlib", lambda: False)
    run, _ = run_scripted(text_specs([0.0]), lambda p, b: token_script(0.2, 0.1, 3))
    text = serve_page(build_report(run), "no figures")
    assert "<svg" not in text and "matplotlib is not installed" in text
    assert "Latency percentiles" in text
