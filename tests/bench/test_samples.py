"""Requests with n samples through the bench client, on virtual time: the body asks for n, every
choice's tokens count, TTFT is the first token of any choice, per-choice counts and finish
reasons are kept, and the report gives samples/s beside requests/s and output tokens/s."""

from __future__ import annotations

import json

import pytest

from corral.bench.report import build_report
from corral.bench.serve_cli import add_arguments, request_options_from_args
from corral.workloads.cli_args import workload_options_from_args
from tests.bench.scripted import DONE_LINE, Script, run_scripted, text_specs, usage_chunk

NUM_SAMPLES = 3
NUM_TOKENS = 4  # per sample


def choice_chunk(index: int, text: str, finish: str | None = None) -> bytes:
    body = {"choices": [{"index": index, "text": text, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n"


def sampled_script(
    first_s: list[float], gap_s: float, *, num_choices: int = NUM_SAMPLES, usage: bool = True
) -> Script:
    """Choice i's first token at first_s[i], then one every gap_s; its last chunk says
    "length"; the choices interleave in time order."""
    lines = []
    for index in range(num_choices):
        for position in range(NUM_TOKENS):
            last = position == NUM_TOKENS - 1
            at = first_s[index] + position * gap_s
            lines.append((at, choice_chunk(index, "t", "length" if last else None)))
    lines.sort(key=lambda line: line[0])
    end = lines[-1][0]
    if usage:
        lines.append((end, usage_chunk(10, num_choices * NUM_TOKENS)))
    lines.append((end, DONE_LINE))
    return Script(lines)


def test_every_choice_counts_and_ttft_is_the_first_of_any():
    workload = text_specs([0.0], num_output=NUM_TOKENS, samples_per_request=NUM_SAMPLES)
    run, transport = run_scripted(
        workload, lambda path, body: sampled_script([0.3, 0.1, 0.2], 0.05)
    )
    body = transport.requests[0][2]
    assert body["n"] == NUM_SAMPLES and body["max_tokens"] == NUM_TOKENS
    served = run.records[0]
    record = served.record
    assert record.is_ok
    assert record.num_output_tokens == NUM_SAMPLES * NUM_TOKENS
    assert record.num_samples == NUM_SAMPLES
    assert record.ttft_s == pytest.approx(0.1)  # choice 1 came first
    assert record.e2e_s == pytest.approx(0.3 + 3 * 0.05)  # choice 0 ended last
    # TPOT per sample: (E2E - TTFT) / (tokens per sample - 1).
    assert record.tpot_s == pytest.approx((0.45 - 0.1) / (NUM_TOKENS - 1))
    assert served.sample_num_chunks == [NUM_TOKENS] * NUM_SAMPLES
    assert served.sample_num_output_tokens == [NUM_TOKENS] * NUM_SAMPLES
    assert served.sample_finish_reasons == ["length"] * NUM_SAMPLES
    assert served.num_expected_output_tokens == NUM_SAMPLES * NUM_TOKENS

    report = build_report(run)
    assert report.num_wrong_length == 0
    summary = report.summary
    assert summary.total_output_tokens == NUM_SAMPLES * NUM_TOKENS
    assert summary.total_samples == NUM_SAMPLES
    assert summary.sample_throughput == pytest.approx(NUM_SAMPLES / run.duration_s)
    # ITL pools the gaps within each sample (0.05 s), not across interleaved choices.
    assert summary.itl.count == NUM_SAMPLES * (NUM_TOKENS - 1)
    assert summary.itl.max_ms == pytest.approx(50)
    text = report.format("t")
    assert "Sample throughput (samples/s)" in text and f"({NUM_SAMPLES} samples)" in text
    document = report.to_dict()
    assert document["records"][0]["sample_finish_reasons"] == ["length"] * NUM_SAMPLES


def test_without_usage_the_choices_events_are_counted():
    workload = text_specs([0.0], num_output=NUM_TOKENS, samples_per_request=NUM_SAMPLES)
    script = sampled_script([0.1, 0.1, 0.1], 0.05, usage=False)
    run, _ = run_scripted(workload, lambda path, body: script)
    served = run.records[0]
    assert served.output_token_source == "chunks"
    assert served.record.num_output_tokens == NUM_SAMPLES * NUM_TOKENS


def test_a_stream_missing_choices_fails_the_request():
    workload = text_specs([0.0], num_output=NUM_TOKENS, samples_per_request=NUM_SAMPLES)
    script = sampled_script([0.1, 0.1], 0.05, num_choices=2)
    run, _ = run_scripted(workload, lambda path, body: script)
    record = run.records[0].record
    assert not record.is_ok
    assert "choices [0, 1] for n = 3" in record.error


def test_one_sample_sends_no_n():
    workload = text_specs([0.0], num_output=NUM_TOKENS)
    script = sampled_script([0.1], 0.05, num_choices=1)
    run, transport = run_scripted(workload, lambda path, body: script)
    assert "n" not in transport.requests[0][2]
    assert run.records[0].record.tpot_s == pytest.approx(0.05)


def test_stop_when_agreed_goes_out_and_is_checked():
    workload = text_specs([0.0], num_output=NUM_TOKENS, samples_per_request=NUM_SAMPLES)
    script = sampled_script([0.1] * NUM_SAMPLES, 0.05)
    _, transport = run_scripted(
        workload, lambda p, b: script, stop_when_agreed=2, answer_pattern=r"#### (\d+)"
    )
    body = transport.requests[0][2]
    assert body["stop_when_agreed"] == 2 and body["answer_pattern"] == r"#### (\d+)"
    with pytest.raises(ValueError, match="needs at least 4 samples per request"):
        run_scripted(workload, lambda p, b: script, stop_when_agreed=4)


def test_cli_flags_reach_the_workload_and_the_body():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--base-url", "http://x", "--dataset", "reasoning", "--samples-per-request", "5"]
        + ["--stop-when-agreed", "3", "--reasoning-output-len", "900"]
    )
    options = workload_options_from_args(args)
    assert options.samples_per_request == 5 and options.reasoning_output_len == 900
    assert request_options_from_args(args).stop_when_agreed == 3
    with pytest.raises(ValueError, match="stop_when_agreed must be >= 2"):
        request_options_from_args(parser.parse_args(["--base-url", "x", "--stop-when-agreed", "1"]))
