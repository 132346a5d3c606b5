"""The real HTTP client against a stub OpenAI server on loopback: streamed chunks are
timestamped on arrival, usage counts tokens, and every kind of failure is counted."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from corral.bench.payload import RequestOptions
from corral.bench.serve import ServeTarget, fetch_model_name, run_serve_benchmark
from corral.workloads import RequestSpec, Workload
from tests.bench.stub_server import StubServer


@pytest.fixture(scope="module")
def stub():
    server = StubServer().start()
    yield server
    server.stop()


def workload(*prompts: str, num_output: int = 4, arrivals_s: list[float] | None = None):
    arrivals = arrivals_s or [0.0] * len(prompts)
    specs = [
        RequestSpec(f"q{i}", t, 5, num_output, prompt=p)
        for i, (p, t) in enumerate(zip(prompts, arrivals))
    ]
    return Workload("stub", specs)


def bench(base_url: str, work: Workload, api_key: str | None = None, **options):
    target = ServeTarget(base_url, api_key=api_key, show_progress=False, request_timeout_s=60)
    report, used = run_serve_benchmark(work, RequestOptions(**options), target)
    return report, used


def test_completions_stream_is_timed_per_chunk_and_counted_by_usage(stub):
    work = workload("ok:4:200:50", "ok:6:100:30", arrivals_s=[0.0, 0.3])
    report, used = bench(stub.base_url, work)
    assert used.model == "stub-model"  # read from /v1/models
    records = [r.record for r in report.run.records]
    assert all(r.is_ok for r in records)
    assert [r.num_output_tokens for r in records] == [4, 6]
    assert [len(r.token_times_s) for r in records] == [4, 6]
    assert {r.output_token_source for r in report.run.records} == {"usage"}
    assert [r.num_prompt_tokens for r in records] == [7, 7]  # the server's usage
    # Causality: a chunk cannot arrive before the server sent it.
    assert records[0].ttft_s >= 0.2 and records[0].e2e_s >= 0.2 + 3 * 0.05
    assert records[1].ttft_s >= 0.1 and records[1].arrival_time_s >= 0.3
    for r in records:
        assert np.all(np.diff(r.token_times_s) >= 0)
        assert r.tpot_s == pytest.approx((r.e2e_s - r.ttft_s) / (r.num_output_tokens - 1))
    summary = report.summary
    assert summary.ttft.mean_ms == pytest.approx(np.mean([r.ttft_s for r in records]) * 1e3)
    assert summary.total_output_tokens == 10
    # What went over the wire: forced lengths, streaming with usage.
    bodies = [body for _, _, body in stub.received[-2:]]
    assert {b["prompt"] for b in bodies} == {"ok:4:200:50", "ok:6:100:30"}
    for b in bodies:
        assert b["max_tokens"] == 4 and b["ignore_eos"] is True and b["stream"] is True
        assert b["stream_options"] == {"include_usage": True}
        assert b["model"] == "stub-model"


def test_chat_stream_skips_the_role_chunk(stub):
    report, _ = bench(stub.base_url, workload("ok:3:50:20"), endpoint="chat", model="m")
    record = report.run.records[0]
    assert record.record.is_ok
    assert len(record.record.token_times_s) == 3 and record.num_chunks == 4
    assert stub.received[-1][2]["messages"] == [{"role": "user", "content": "ok:3:50:20"}]


def test_without_usage_the_chunks_are_counted(stub):
    work = workload("nousage:5:10:10", num_output=5)
    report, _ = bench(stub.base_url, work, api_key="sk-test", model="m")
    assert stub.authorizations[-1] == "Bearer sk-test"
    record = report.run.records[0]
    assert record.output_token_source == "chunks" and record.record.num_output_tokens == 5


def test_http_errors_cut_streams_and_error_events_are_counted(stub):
    report, _ = bench(
        stub.base_url, workload("ok:2:0:0", "http500", "cut:2:0:10", "errorevent"), model="m"
    )
    errors = [r.record.error for r in report.run.records]
    assert errors[0] is None
    assert errors[1] == "HTTP 500: stub failure"
    assert errors[2] is not None  # the connection dropped mid-body
    assert errors[2].startswith(("ClientPayloadError", "stream ended before [DONE]"))
    assert errors[3] == "error event: stub died"
    assert report.summary.num_completed == 1 and report.summary.num_failed == 3
    assert sum(report.summary.errors.values()) == 3


def test_connection_refused_is_counted_for_every_request():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    report, _ = bench(f"http://127.0.0.1:{port}", workload("a", "b", "c"), model="m")
    assert report.summary.num_completed == 0 and report.summary.num_failed == 3
    assert all("ClientConnectorError" in r.record.error for r in report.run.records)
    with pytest.raises(ValueError, match="pass --model"):
        fetch_model_name(ServeTarget(f"http://127.0.0.1:{port}", show_progress=False))


def test_clients_priorities_and_deadlines_reach_the_server(stub):
    """What fair, priority and edf need goes over the wire: user, priority, deadline_s."""
    from corral.core.slo_target import parse_slo

    specs = [
        RequestSpec("a", 0.0, 5, 4, prompt="ok:4:0:0", client_id="client-1", priority=2),
        RequestSpec("b", 0.0, 5, 6, prompt="ok:6:0:0"),
    ]
    slo = parse_slo("ttft_ms=200,tpot_ms=50")
    bench(stub.base_url, Workload("stub", specs), deadline_slo=slo)
    bodies = {body["prompt"]: body for _, _, body in stub.received[-2:]}
    first, second = bodies["ok:4:0:0"], bodies["ok:6:0:0"]
    assert first["user"] == "client-1" and first["priority"] == 2
    assert "user" not in second and "priority" not in second
    assert first["deadline_s"] == pytest.approx(0.2 + 3 * 0.05)
    assert second["deadline_s"] == pytest.approx(0.2 + 5 * 0.05)
    with pytest.raises(ValueError, match="ttft and tpot"):
        RequestOptions(deadline_slo=parse_slo("e2e_ms=1000"))
