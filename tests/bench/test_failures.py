"""A failing server's errors are counted and named, never hidden (scripted transport)."""

from __future__ import annotations

import pytest

from corral.bench.report import build_report
from tests.bench.scripted import Script, completion_chunk, run_scripted, text_specs, token_script


def mixed(path: str, payload: dict) -> Script:
    name = payload["prompt"]
    if name == "r1":
        return Script(status=500, body='{"error": {"message": "internal error"}}')
    if name == "r2":
        return Script(connect_error=ConnectionRefusedError(111, "Connection refused"))
    if name == "r3":  # two tokens, then the connection breaks
        lines = [(0.1, completion_chunk("a")), (0.2, completion_chunk("b"))]
        return Script(lines, error_after_lines=ConnectionResetError("peer went away"))
    if name == "r4":  # two tokens, then the body just ends (no [DONE])
        return Script([(0.1, completion_chunk("a")), (0.2, completion_chunk("b"))])
    if name == "r5":
        lines = [(0.1, completion_chunk("a")), (0.2, b'data: {"error": {"message": "oom"}}\n')]
        return Script([*lines, (0.2, b"data: [DONE]\n")])
    if name == "r6":
        return Script(error_after_lines=TimeoutError())
    return token_script(0.1, 0.1, 4)


def test_every_failure_is_counted_with_its_error():
    run, _ = run_scripted(text_specs([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), mixed)
    errors = [record.record.error for record in run.records]
    assert errors[0] is None
    assert errors[1] == "HTTP 500: internal error"
    assert errors[2] == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert errors[3] == "ConnectionResetError: peer went away"
    assert errors[4] == "stream ended before [DONE] after 2 chunks"
    assert errors[5] == "error event: oom"
    assert errors[6] == "timeout (--request-timeout-s)"
    assert run.records[1].http_status == 500
    # A broken stream keeps what arrived (for the JSON) but is not a completed request.
    assert run.records[3].record.token_times_s == pytest.approx([0.4, 0.5])
    report = build_report(run)
    summary = report.summary
    assert summary.num_completed == 1 and summary.num_failed == 6
    assert sum(summary.errors.values()) == 6
    assert summary.ttft.count == 1  # failed requests stay out of the latencies
    text = report.format("failures")
    assert "1 / 6" in text and "error x1: HTTP 500: internal error" in text
    document = report.to_dict()
    assert [r["error"] for r in document["records"]] == errors


def test_many_distinct_errors_are_summarized_but_all_kept_in_the_records():
    def script(path: str, payload: dict) -> Script:
        return Script(status=400, body=f'{{"error": {{"message": "bad id {payload["prompt"]}"}}}}')

    run, _ = run_scripted(text_specs([0.0] * 12), script)
    report = build_report(run)
    text = report.format("errors", max_num_error_lines=3)
    assert "error x9: ... 9 more distinct errors (see --result-json)" in text
    assert text.count("error x1: HTTP 400: bad id") == 3
    assert len({r["error"] for r in report.to_dict()["records"]}) == 12
