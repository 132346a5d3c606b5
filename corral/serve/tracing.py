"""Request tracing: one OpenTelemetry trace per finished request (`corral serve
--otlp-traces-endpoint URL`), so that one slow request can be explained.

Each finished sample becomes a span `corral.request` from its arrival to its end, with child
spans for its phases on the frontend's clock: `queue` (arrival to first scheduled), `prefill`
(first scheduled to first token: the prompt, any wait for its KV from another engine, any
preemption before the first token) and `decode` (first token to the end). Inside those, on the
core's clock (time.monotonic() as well): a `preemption` span per preemption, from losing its KV
to being scheduled again (attributes: mode recompute or swap, the computed tokens it held, those
it had to compute again), and a `kv_transfer` span per wait for its KV (source: "remote", from
another engine under disaggregated prefill, or "disk", read back from the disk tier).
Attributes of the request span: the request id, prompt and output tokens, prompt tokens served
from the prefix cache or fetched from another engine (num_cached_tokens), preemptions, finish
reason, queue time, TTFT, TPOT. Spans are made off the hot path, from the same per-request
timings the Prometheus metrics use (a stat logger of AsyncLLM), and exported in batches by the
SDK's background thread.

A request that carries a W3C trace context (`traceparent`, `tracestate` headers) gets its
`corral.request` span in the caller's trace, as a child of the caller's span (and is recorded
only if the caller sampled it); a malformed context is ignored: the request starts a trace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from corral.core.request_times import PREEMPTION, RequestInterval
from corral.engine.request_stats import FinishedRequestStats, IterationStats

SERVICE_NAME = "corral"
# The W3C trace context headers a request may carry (https://www.w3.org/TR/trace-context/).
TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace context among an HTTP request's headers (None: it carries none)."""
    found = {name: headers[name] for name in TRACE_HEADERS if name in headers}
    return found or None


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
            "corral.request",
            context=_caller_context(finished.trace_headers),
            start_time=self._ns(times.arrival_s),
            attributes=attributes,
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
        for interval in finished.intervals or ():
            self._interval(interval, context, end_s)
        root.end(end_time=self._ns(end_s))

    def _interval(self, interval: RequestInterval, context: Any, end_s: float) -> None:
        """A preemption or a wait for KV, as a child span of the request's (one still open at
        the request's end ends there)."""
        if interval.kind == PREEMPTION:
            attributes: dict[str, Any] = {
                "corral.preemption.mode": interval.detail,
                "corral.preemption.num_held_tokens": interval.num_tokens,
            }
            if interval.num_recomputed_tokens is not None:
                attributes["corral.preemption.num_recomputed_tokens"] = (
                    interval.num_recomputed_tokens
                )
        else:
            attributes = {"corral.kv_transfer.source": interval.detail}
        span = self.tracer.start_span(
            interval.kind,
            context=context,
            start_time=self._ns(interval.start_s),
            attributes=attributes,
        )
        stop_s = interval.end_s if interval.end_s is not None else end_s
        span.end(end_time=self._ns(min(stop_s, end_s)))


def _caller_context(headers: Mapping[str, str] | None) -> Any:
    """The caller's span as a parent context (None: no context, or one that does not parse)."""
    if not headers:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    try:
        context = TraceContextTextMapPropagator().extract(dict(headers))
    except Exception:  # a malformed header is the caller's problem, never the request's
        return None
    return context if get_current_span(context).get_span_context().is_valid else None
