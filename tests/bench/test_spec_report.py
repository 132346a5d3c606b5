"""Speculative decoding in bench reports: the server's /metrics counters scraped around a run and
differenced (bench serve), the scheduler's counters around the timed part (bench throughput),
and nothing at all when the server or engine does not speculate."""

from __future__ import annotations

import json
import sys

import pytest

from corral.bench.client import ServeRun
from corral.bench.payload import RequestOptions
from corral.bench.report import build_report
from corral.bench.serve import ServeTarget, run_serve_benchmark
from corral.bench.spec_decode import SpecDecodeCounts, parse_spec_counts
from corral.bench.sweep import SweepPoint, pool_repeats
from corral.cli import main
from corral.core.messages import SchedulerStats
from corral.engine.request_stats import IterationStats
from corral.serve.metrics import ServerMetrics
from corral.spec.stats import SpecDecodeStats
from corral.workloads import RequestSpec, Workload
from corral.workloads.tokens import synthetic_token_ids
from tests.bench.stub_server import StubServer

SPEC_ARGS = ("--speculative-method", "ngram", "--num-speculative-tokens", "3")
SPEC_ARGS += ("--speculative-tokens-rule", "fixed")
PROMPT = " ".join(["the cat sat on the mat and the dog sat on the log"] * 4)


def rendered(spec: SpecDecodeStats | None, num_speculative_tokens: int | None) -> str:
    """/metrics of a server whose scheduler reported spec once."""
    metrics = ServerMetrics('a "quoted" model', num_speculative_tokens)
    metrics.observe(IterationStats(SchedulerStats(1, 0, 0.5, 0, 8, 4, spec_decode=spec)))
    return metrics.render(True).decode()


def test_the_server_exposition_parses_back_to_the_scheduler_counts():
    spec = SpecDecodeStats()
    for num_draft, num_accepted in [(3, 3), (3, 1), (2, 0), (3, 2)]:
        spec.record(num_draft, num_accepted)
    counts = parse_spec_counts(rendered(spec, 3))
    assert counts == SpecDecodeCounts(4, 11, 6, (3, 2, 1)) == SpecDecodeCounts.from_stats(spec)
    assert counts.acceptance_rate == pytest.approx(6 / 11)
    assert counts.mean_accepted_length == pytest.approx(1 + 6 / 4)
    assert counts.per_position_acceptance == pytest.approx([0.75, 0.5, 0.25])
    # Speculation on but nothing drafted yet: zeros, not None; off: None.
    assert parse_spec_counts(rendered(None, 2)) == SpecDecodeCounts(0, 0, 0, (0, 0))
    assert parse_spec_counts(rendered(None, None)) is None
    assert parse_spec_counts("") is None


def test_vllm_names_and_label_sets_are_summed():
    text = "\n".join(
        [
            "# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.",
            'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0',
            'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 5.0',
            'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0',
            'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 1.2e+01',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="1"} 4.0',
            'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="0"} 8.0',
            'vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e+09',
        ]
    )
    assert parse_spec_counts(text) == SpecDecodeCounts(15, 30, 12, (8, 4))


def test_differences_sums_and_the_report_lines():
    before, after = SpecDecodeCounts(2, 6, 3, (2, 1)), SpecDecodeCounts(6, 18, 9, (5, 3, 1))
    delta = after - before
    assert delta == SpecDecodeCounts(4, 12, 6, (3, 2, 1))
    assert delta + before == after
    assert SpecDecodeCounts().acceptance_rate is None
    assert SpecDecodeCounts().mean_accepted_length is None
    run = ServeRun([], 1.0, 0)
    report = build_report(run, spec_decode=delta)
    text = report.format("t")
    assert "Spec decode acceptance rate:            0.500" in text
    assert "Spec decode mean accepted length:       2.50" in text
    assert "Spec decode acceptance per position:    0.75 / 0.50 / 0.25" in text
    document = report.to_dict()["spec_decode"]
    assert document["acceptance_rate"] == 0.5 and document["mean_accepted_length"] == 2.5
    assert document["num_accepted_tokens_per_pos"] == [3, 2, 1]
    plain = build_report(run)
    assert plain.to_dict()["spec_decode"] is None and "Spec decode" not in plain.format("t")
    # Pooled repeats add their runs' counts; one repeat without counts leaves none.
    points = [[SweepPoint("max_concurrency", 1, None, r)] for r in (report, report)]
    assert pool_repeats(points, None)[0].report.spec_decode == delta + delta
    mixed = [points[0], [SweepPoint("max_concurrency", 1, None, plain)]]
    assert pool_repeats(mixed, None)[0].report.spec_decode is None


def test_a_server_without_metrics_gives_no_spec_report():
    stub = StubServer().start()
    try:
        specs = [RequestSpec(f"q{i}", 0.0, 5, 3, prompt="ok:3:0:0") for i in range(2)]
        target = ServeTarget(stub.base_url, show_progress=False, request_timeout_s=30)
        report, _ = run_serve_benchmark(Workload("stub", specs), RequestOptions(), target)
    finally:
        stub.stop()
    assert report.summary.num_completed == 2
    assert report.spec_decode is None and report.to_dict()["spec_decode"] is None
    assert "Spec decode" not in report.format("stub")


@pytest.fixture(scope="module")
def spec_server(tiny_model, tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the server tests use /proc and POSIX signals")
    from tests.serve.conftest import ServerProcess

    log = tmp_path_factory.mktemp("spec-server") / "server.log"
    server = ServerProcess(tiny_model, log, *SPEC_ARGS, "--num-kv-blocks", "64")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_bench_serve_reports_the_servers_acceptance(spec_server, tmp_path, capsys):
    out, dataset = tmp_path / "run.json", tmp_path / "prompts.jsonl"
    # Prompt lookup needs repeated n-grams: random token prompts give it nothing to propose.
    lines = [{"prompt": PROMPT, "output_len": 24}, {"prompt": PROMPT[4:], "output_len": 20}]
    dataset.write_text("\n".join(json.dumps(line) for line in lines * 2))
    args = ["bench", "serve", "--base-url", spec_server.base_url, "--no-progress"]
    args += ["--dataset", "jsonl", "--dataset-path", str(dataset), "--request-rate", "20"]
    args += ["--warmup-requests", "1", "--result-json", str(out)]
    assert main(args) == 0
    spec = json.loads(out.read_text())["spec_decode"]
    assert spec is not None and spec["num_drafts"] > 0 and spec["num_accepted_tokens"] > 0, spec
    assert 0 <= spec["num_accepted_tokens"] <= spec["num_draft_tokens"] <= 3 * spec["num_drafts"]
    assert sum(spec["num_accepted_tokens_per_pos"]) == spec["num_accepted_tokens"]
    assert spec["acceptance_rate"] == pytest.approx(
        spec["num_accepted_tokens"] / spec["num_draft_tokens"]
    )
    assert 1 <= spec["mean_accepted_length"] <= 4
    text = capsys.readouterr().out
    assert f"Spec decode acceptance rate:            {spec['acceptance_rate']:.3f}" in text


def test_bench_throughput_reports_the_engines_acceptance(tiny_model, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    out, dataset = tmp_path / "throughput.json", tmp_path / "prompts.jsonl"
    # Ids from {1, 2, 3}: n-grams recur in the prompt, so prompt lookup has drafts to offer.
    line = {"prompt_token_ids": synthetic_token_ids(0, 16, 4), "output_len": 64}
    dataset.write_text("\n".join([json.dumps(line)] * 3))
    args = ["bench", "throughput", "--model", str(tiny_model), "--dtype", "float32"]
    args += ["--num-threads", "1", "--num-kv-blocks", "64", *SPEC_ARGS]
    args += ["--dataset", "jsonl", "--dataset-path", str(dataset), "--result-json", str(out)]
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    (result,) = json.loads(out.read_text())["results"]
    spec = result["spec_decode"]
    assert spec is not None and spec["num_drafts"] > 0
    assert sum(spec["num_accepted_tokens_per_pos"]) == spec["num_accepted_tokens"]
    assert "speculative decoding: acceptance" in capsys.readouterr().out


def test_generate_prints_the_acceptance_summary_only_when_speculating(tiny_model, capsys):
    import torch

    threads = torch.get_num_threads()
    args = ["generate", "--model", str(tiny_model), "--dtype", "float32", "--num-threads", "1"]
    args += ["--num-kv-blocks", "64", "--max-tokens", "8", PROMPT]
    try:
        assert main([*args, *SPEC_ARGS]) == 0
        spec_err = capsys.readouterr().err
        assert main(args) == 0
        plain_err = capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    assert "speculative decoding (ngram): " in spec_err
    assert "speculative decoding" not in plain_err
