"""ServeRecord: what `corral bench serve` keeps per request (the shared RequestRecord, plus the
plan, the transport's view and how the output tokens were counted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.bench.stream import ParsedStream
from corral.workloads import RequestSpec
from corral.workloads.metrics import RequestRecord

# How num_output_tokens was found.
FROM_USAGE = "usage"  # the server's usage report
FROM_CHUNKS = "chunks"  # the number of output events (no usage in the stream)
FROM_NONE = "none"  # the request failed before any output


@dataclass(slots=True)
class ServeRecord:
    """Times are seconds since the run's start. record.arrival_time_s is when the request was
    sent; scheduled_time_s when the workload planned it (a later turn: parent's end + think
    time). The gap between them is time spent waiting for a --max-concurrency slot, or the
    client running late."""

    record: RequestRecord
    scheduled_time_s: float
    end_time_s: float
    num_expected_output_tokens: int
    output_token_source: str
    num_chunks: int = 0
    http_status: int | None = None
    conversation_id: str | None = None
    turn_index: int = 0
    is_sent: bool = True  # False: a later turn skipped because an earlier one failed
    # Per sample (choice index) of the request: its chunks with output, its finish reason, and
    # its output tokens when they are known exactly (the chunks of all samples add up to the
    # usage's completion tokens: one token each); empty before any output.
    sample_num_chunks: list[int] = field(default_factory=list)
    sample_finish_reasons: list[str | None] = field(default_factory=list)
    sample_num_output_tokens: list[int] | None = None

    @property
    def send_delay_s(self) -> float:
        return self.record.arrival_time_s - self.scheduled_time_s

    def to_dict(self) -> dict[str, Any]:
        record = self.record
        ok = record.is_ok
        times = list(record.token_times_s)
        return {
            "request_id": record.request_id,
            "scheduled_time_s": self.scheduled_time_s,
            "send_time_s": record.arrival_time_s,
            "end_time_s": self.end_time_s,
            "num_prompt_tokens": record.num_prompt_tokens,
            "num_output_tokens": record.num_output_tokens,
            "num_expected_output_tokens": self.num_expected_output_tokens,
            "output_token_source": self.output_token_source,
            "num_chunks": self.num_chunks,
            "ttft_s": record.ttft_s if ok else None,
            "tpot_s": record.tpot_s if ok else None,
            "e2e_s": record.e2e_s if ok else None,
            "itl_s": [b - a for a, b in zip(times, times[1:])],
            "token_times_s": times,
            "http_status": self.http_status,
            "error": record.error,
            "conversation_id": self.conversation_id,
            "turn_index": self.turn_index,
            "is_sent": self.is_sent,
            "num_samples": record.num_samples,
            "sample_num_chunks": self.sample_num_chunks,
            "sample_num_output_tokens": self.sample_num_output_tokens,
            "sample_finish_reasons": self.sample_finish_reasons,
        }


def failed_record(
    spec: RequestSpec,
    scheduled_s: float,
    send_s: float,
    end_s: float,
    error: str,
    *,
    is_sent: bool = True,
) -> ServeRecord:
    """A request that produced nothing usable (not sent, refused, or broken)."""
    return ServeRecord(
        RequestRecord(
            spec.request_id,
            send_s,
            spec.num_prompt_tokens,
            0,
            [],
            error,
            num_samples=spec.samples_per_request,
        ),
        scheduled_s,
        end_s,
        spec.num_sampled_output_tokens,
        FROM_NONE,
        conversation_id=spec.conversation_id,
        turn_index=spec.turn_index,
        is_sent=is_sent,
    )


def stream_record(
    spec: RequestSpec,
    scheduled_s: float,
    send_s: float,
    end_s: float,
    status: int,
    parsed: ParsedStream,
    transport_error: str | None = None,
) -> ServeRecord:
    """The record of a 200 response whose body was streamed (complete, cut, or with an error
    event); a transport error (the connection broke mid-stream) takes precedence."""
    error = transport_error or parsed.error
    if error is None and not parsed.is_done:
        error = f"stream ended before [DONE] after {parsed.num_chunks} chunks"
    if error is None and not parsed.event_times_s:
        error = "no output tokens in the stream"
    choices = parsed.choice_event_times_s or {}
    num_samples = spec.samples_per_request
    if error is None and num_samples > 1 and sorted(choices) != list(range(num_samples)):
        error = (
            f"the stream had choices {sorted(choices)} for n = {num_samples} "
            f"(expected indices 0..{num_samples - 1})"
        )
    if parsed.num_usage_output_tokens is not None:
        num_output, source = parsed.num_usage_output_tokens, FROM_USAGE
    else:
        num_output, source = len(parsed.event_times_s), FROM_CHUNKS
    num_prompt = parsed.num_usage_prompt_tokens
    sample_chunks = [len(times) for times in choices.values()]
    record = RequestRecord(
        spec.request_id,
        send_s,
        spec.num_prompt_tokens if num_prompt is None else num_prompt,
        num_output,
        parsed.event_times_s,
        error,
        num_samples=num_samples,
        sample_token_times_s=list(choices.values()) if num_samples > 1 else None,
    )
    return ServeRecord(
        record,
        scheduled_s,
        end_s,
        spec.num_sampled_output_tokens,
        source,
        parsed.num_chunks,
        status,
        spec.conversation_id,
        spec.turn_index,
        sample_num_chunks=sample_chunks,
        sample_finish_reasons=list((parsed.choice_finish_reasons or {}).values()),
        sample_num_output_tokens=sample_chunks if sum(sample_chunks) == num_output else None,
    )
