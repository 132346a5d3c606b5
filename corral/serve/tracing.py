"""Request tracing: one OpenTelemetry trace per finished request (`corral serve
--otlp-traces-endpoint URL`), so that one slow request can be explained.

Each finished sample becomes a span `corral.request` from its arrival to its end, with child
spans for its phases on the frontend's clock: `queue` (arrival to first scheduled), `prefill`
(first scheduled to first token: the prompt, any wait for its KV from another engine, any
preemption before the first token) and `decode` (first token to the end). Attributes: the
request id, prompt and output tokens, prompt tokens served from the prefix cache or fetched
from another engine (num_cached_tokens), preemptions, finish reason, queue time, TTFT, TPOT.
Spans are made off the hot path, from the same per-request timings the Prometheus metrics use
(a stat logger of AsyncLLM), and exported in batches by the SDK's background thread.
"""

from __future__ import annotations

import time
from typing import Any

from corral.engine.request_stats import FinishedRequestStats, IterationStats

SERVICE_NAME = "corral"


class RequestTracer:
    """A stat logger (AsyncLLM.stat_loggers) that turns finished requests into spans."""

    def __init__(self, span_processor: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        self.provider.add_span_processor(span_processor)
        self.tracer = self.provider.get_tracer("corral.serve")
        # The frontend's times are time.monotonic(); spans want the wall clock in ns.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    @classmethod
    def to_endpoint(cls, endpoint: str) -> RequestTracer:
        """Export over OTLP/HTTP (protobuf) to endpoint, e.g. http://collector:4318/v1/traces."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return cls(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    def observe(self, stats: IterationStats) -> None:
        for finished in stats.finished:
            if finished.times is not None:
                self._trace(finished)

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()

    def _ns(self, monotonic_s: float) -> int:
        return self._offset_ns + int(monotonic_s * 1e9)

    def _trace(self, finished: FinishedRequestStats) -> None:
        from opentelemetry import trace

        times = finished.times
        assert times is not None
        end_s = times.finished_s if times.finished_s is not None else times.arrival_s
        attributes: dict[str, Any] = {
            "corral.request_id": finished.request_id,
            "corral.finish_reason": finished.finish_reason,
            "corral.num_prompt_tokens": finished.num_prompt_tokens,
            "corral.num_output_tokens": finished.num_generation_tokens,
            "corral.e2e_latency_s": finished.e2e_latency_s,
            "corral.num_preemptions": finished.num_preemptions,
            "corral.num_cached_tokens": finished.num_cached_tokens,
        }
        for name, value in (
            ("corral.queue_time_s", finished.queue_time_s),
            ("corral.ttft_s", times.ttft_s),
            ("corral.tpot_s", finished.time_per_output_token_s),
        ):
            if value is not None:
                attributes[name] = value
        root = self.tracer.start_span(
            "corral.request", start_time=self._ns(times.arrival_s), attributes=attributes
        )
        context = trace.set_span_in_context(root)
        phases = (
            ("queue", times.arrival_s, times.first_scheduled_s),
            ("prefill", times.first_scheduled_s, times.first_token_s),
            ("decode", times.first_token_s, end_s),
        )
        for name, start_s, stop_s in phases:
            if start_s is None or stop_s is None:
                continue
            span = self.tracer.start_span(name, context=context, start_time=self._ns(start_s))
            span.end(end_time=self._ns(stop_s))
        root.end(end_time=self._ns(end_s))
