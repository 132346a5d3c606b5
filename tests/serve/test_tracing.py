"""Request tracing: each finished request is a `corral.request` span with its queue, prefill and
decode phases as ordered child spans and its counts as attributes, exported to an in-process
collector; the server flag wires it; a bad endpoint is refused."""

from __future__ import annotations

import asyncio
import http.server
import threading

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from corral import SamplingParams
from corral.serve.config import ServerConfig
from corral.serve.tracing import RequestTracer
from tests.serve.test_async_llm import _engine

PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def test_each_request_is_a_trace_of_its_phases(tiny_model):
    exporter = InMemorySpanExporter()
    tracer = RequestTracer(SimpleSpanProcessor(exporter))

    async def main() -> None:
        engine = await _engine(tiny_model)
        engine.stat_loggers.append(tracer.observe)
        for request_id in ("a", "b"):
            async for _ in engine.generate("Once upon a time", PARAMS, request_id):
                pass
        await engine.shutdown()

    asyncio.run(asyncio.wait_for(main(), 120))
    spans = exporter.get_finished_spans()
    roots = [span for span in spans if span.name == "corral.request"]
    assert sorted(root.attributes["corral.request_id"] for root in roots) == ["a", "b"]
    for root in roots:
        assert root.attributes["corral.num_output_tokens"] == 6
        assert root.attributes["corral.finish_reason"] == "length"
        assert root.attributes["corral.num_prompt_tokens"] > 0
        children = {
            span.name: span for span in spans if span.parent and span.parent.span_id == (
                root.context.span_id
            )
        }  # fmt: skip
        assert set(children) == {"queue", "prefill", "decode"}
        queue, prefill, decode = children["queue"], children["prefill"], children["decode"]
        assert root.start_time == queue.start_time <= queue.end_time == prefill.start_time
        assert prefill.start_time <= prefill.end_time == decode.start_time
        assert decode.end_time == root.end_time
        ttft_ns = prefill.end_time - root.start_time
        assert ttft_ns == pytest.approx(root.attributes["corral.ttft_s"] * 1e9, abs=2000)
        assert {span.context.trace_id for span in children.values()} == {root.context.trace_id}


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that counts the export requests it receives."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        _Collector.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_the_server_flag_exports_over_otlp(tiny_model):
    from starlette.testclient import TestClient

    from corral.engine.async_llm import AsyncLLM
    from corral.llm import engine_config_from_kwargs
    from corral.serve.app import build_app

    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256
    )
    try:
        engine = AsyncLLM(config, multiprocess=False)
        app = build_app(engine, ServerConfig(otlp_traces_endpoint=endpoint))
        with TestClient(app) as client:
            body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0}
            assert client.post("/v1/completions", json=body).status_code == 200
        # Leaving the client shut the app down, which flushed the batch to the collector.
        assert _Collector.bodies and b"corral.request" in b"".join(_Collector.bodies)
    finally:
        server.shutdown()


def test_a_bad_endpoint_is_refused():
    with pytest.raises(ValueError, match="otlp_traces_endpoint must be an http"):
        ServerConfig(otlp_traces_endpoint="collector:4318")


def test_traces_count_preemptions_and_cached_prompt_tokens(tiny_model):
    from corral.engine.async_llm import AsyncLLM
    from corral.llm import engine_config_from_kwargs

    exporter = InMemorySpanExporter()
    tracer = RequestTracer(SimpleSpanProcessor(exporter))
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=8, max_model_len=128
    )
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompt = "Once upon a time, in a land far away, a fox"

    async def main() -> int:
        engine = await AsyncLLM.create(config, multiprocess=False)
        engine.stat_loggers.append(tracer.observe)

        async def one(request_id: str) -> None:
            async for _ in engine.generate(prompt, long, request_id):
                pass

        await one("warm")  # its prompt blocks stay cached for the others
        await asyncio.gather(*(one(f"r{i}") for i in range(4)))  # 4 x 5 blocks > 8: preempted
        num_preemptions = engine.last_stats.num_preemptions
        await engine.shutdown()
        return num_preemptions

    num_preemptions = asyncio.run(asyncio.wait_for(main(), 120))
    roots = {
        span.attributes["corral.request_id"]: span.attributes
        for span in exporter.get_finished_spans()
        if span.name == "corral.request"
    }
    assert num_preemptions > 0
    assert sum(a["corral.num_preemptions"] for a in roots.values()) == num_preemptions
    assert roots["warm"]["corral.num_cached_tokens"] == 0
    assert all(roots[f"r{i}"]["corral.num_cached_tokens"] >= 16 for i in range(4))
    # Each preemption is a span inside its request's, after its first scheduling.
    spans = exporter.get_finished_spans()
    num_spans = 0
    for root in (span for span in spans if span.name == "corral.request"):
        children = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
        prefill = next(s for s in children if s.name == "prefill")
        preemptions = [s for s in children if s.name == "preemption"]
        assert len(preemptions) == root.attributes["corral.num_preemptions"]
        for span in preemptions:
            assert prefill.start_time <= span.start_time <= span.end_time <= root.end_time
            assert span.context.trace_id == root.context.trace_id
            assert span.attributes["corral.preemption.mode"] == "recompute"
            assert span.attributes["corral.preemption.num_held_tokens"] > 0
            assert span.attributes["corral.preemption.num_recomputed_tokens"] >= 0
        num_spans += len(preemptions)
    assert num_spans == num_preemptions


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _exported_spans(bodies: list[bytes]) -> list:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return [
        span
        for body in bodies
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


def test_a_callers_trace_context_parents_the_request_span(tiny_model):
    from starlette.testclient import TestClient

    from corral.engine.async_llm import AsyncLLM
    from corral.llm import engine_config_from_kwargs
    from corral.serve.app import build_app

    _Collector.bodies = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256
    )
    traced = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=x"}
    body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0}
    try:
        engine = AsyncLLM(config, multiprocess=False)
        app = build_app(engine, ServerConfig(otlp_traces_endpoint=endpoint))
        with TestClient(app) as client:
            answer = client.post("/v1/completions", json=body, headers=traced)
            assert answer.status_code == 200
            traced_id = answer.json()["id"]
            malformed = {"traceparent": "00-not-a-trace-01", "tracestate": "=;=="}
            answer = client.post("/v1/completions", json=body, headers=malformed)
            assert answer.status_code == 200  # ignored: a fresh trace
            fresh_id = answer.json()["id"]
    finally:
        server.shutdown()
    roots = {
        attribute.value.string_value: span
        for span in _exported_spans(_Collector.bodies)
        if span.name == "corral.request"
        for attribute in span.attributes
        if attribute.key == "corral.request_id"
    }
    assert roots[traced_id].trace_id.hex() == TRACE_ID
    assert roots[traced_id].parent_span_id.hex() == PARENT_ID
    assert roots[traced_id].trace_state == "vendor=x"
    assert roots[fresh_id].trace_id.hex() != TRACE_ID and not roots[fresh_id].parent_span_id


def test_the_trace_context_is_read_only_when_tracing_is_on():
    from corral.serve.tracing import _caller_context, trace_headers

    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "content-type": "x"}
    assert trace_headers(headers) == {"traceparent": headers["traceparent"]}
    assert trace_headers({"content-type": "x"}) is None
    assert _caller_context(headers) is not None
    for bad in ("", "garbage", f"00-{'0' * 32}-{PARENT_ID}-01", f"zz-{TRACE_ID}-{PARENT_ID}-01"):
        assert _caller_context({"traceparent": bad}) is None


def test_the_router_forwards_the_trace_context():
    from corral.cluster.proxy import request_headers

    incoming = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "a=b", "host": "x"}
    assert request_headers(incoming) == {
        "traceparent": incoming["traceparent"],
        "tracestate": "a=b",
    }


def test_waits_for_kv_are_spans_and_an_unsampled_caller_gets_none():
    from corral.core.request_times import KV_TRANSFER, RequestInterval, RequestTimes
    from corral.engine.request_stats import FinishedRequestStats, IterationStats

    exporter = InMemorySpanExporter()
    tracer = RequestTracer(SimpleSpanProcessor(exporter))
    times = RequestTimes(10.0, 10.5, 11.0, 12.0, 12.0, 3)
    wait = RequestInterval(KV_TRANSFER, 10.1, 10.4, "remote")
    finished = FinishedRequestStats("length", 2.0, 0.5, 0.5, 8, 3, "t", times, 0, 16, [wait])
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    skipped = FinishedRequestStats("length", 2.0, 0.5, 0.5, 8, 3, "u", times, 0, 0, None, unsampled)
    tracer.observe(IterationStats(None, finished=[finished, skipped]))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"corral.request", "queue", "prefill", "decode", "kv_transfer"}
    assert spans["corral.request"].attributes["corral.request_id"] == "t"
    transfer = spans["kv_transfer"]
    assert transfer.parent.span_id == spans["corral.request"].context.span_id
    assert transfer.attributes["corral.kv_transfer.source"] == "remote"
    assert spans["queue"].start_time <= transfer.start_time <= transfer.end_time
    assert transfer.end_time <= spans["queue"].end_time
