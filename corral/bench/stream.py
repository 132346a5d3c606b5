"""Reading one streamed OpenAI response after the fact: when each output event arrived, the
usage the server reported, and whether the stream ended properly.

The client only timestamps raw lines while a response streams; this module turns them into
output events. An output event is a `data:` chunk with a choice that carries generated text:
completions' `text`, chat's `delta.content`. A choice whose text is empty counts too (a token
whose text the server holds back, such as half of a UTF-8 character), except a chat chunk that
only announces the role and a chunk that only carries a finish_reason. Chunks without choices
(the final usage chunk) are not events. If a stream has choices but none qualified (a single
token with no text), the first chunk with choices is the event. A finish chunk without text
does count when the usage reports more output tokens than there were events: it carried the last
token, whose text was empty (a random-weight model's tokens often decode to nothing), and
without it the stream would seem to end a token early (shortening E2E and TPOT).

The output token count is the usage the server reports (stream_options.include_usage), else
the number of events, and the record says which was used.

A request with n > 1 streams its samples' choices interleaved, told apart by their `index`. Each
choice's events and finish reason are kept apart (choice_event_times_s, choice_finish_reasons);
event_times_s holds every choice's events in order, so the first is the first token of any
sample and the last the last of any; usage counts the tokens of all choices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class ParsedStream:
    event_times_s: list[float]  # of every choice, in order
    text: str  # the generated text of choice 0, joined ("" unless keep_text)
    num_usage_prompt_tokens: int | None
    num_usage_output_tokens: int | None
    num_chunks: int  # data chunks with choices
    is_done: bool  # the [DONE] sentinel arrived
    error: str | None  # an error event inside the stream
    # Per choice index (0..n-1 as they appeared): its events' times and finish reason.
    choice_event_times_s: dict[int, list[float]] | None = None
    choice_finish_reasons: dict[int, str | None] | None = None


def _choice_text(choice: dict[str, Any], is_chat: bool) -> tuple[str | None, bool]:
    """(text or None, whether the choice is an output event)."""
    if is_chat:
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if not text and delta.get("role") is not None:
            return text, False
    else:
        text = choice.get("text")
    if text:
        return text, True
    return text, text is not None and choice.get("finish_reason") is None


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict):
        message = payload.get("message") or payload.get("type") or json.dumps(payload)
        return str(message)
    return str(payload)


def parse_stream(
    timed_lines: Sequence[tuple[float, bytes]], *, is_chat: bool, keep_text: bool = False
) -> ParsedStream:
    """Parse (receive time, raw line) pairs of one SSE body; lines other than `data:` are
    ignored (comments, `event:`, `id:`), as is anything after [DONE]."""
    texts: list[str] = []
    first_choice_time: float | None = None
    choice_times: dict[int, list[float]] = {}
    finish_reasons: dict[int, str | None] = {}
    # Per choice, the last finish chunk that was not an event.
    textless_finish_times: dict[int, float] = {}
    usage: dict[str, Any] | None = None
    num_chunks = 0
    error: str | None = None
    is_done = False
    for time_s, line in timed_lines:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == DONE:
            is_done = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            error = error or f"malformed stream chunk: {data[:80]!r}"
            continue
        if not isinstance(chunk, dict):
            error = error or f"malformed stream chunk: {data[:80]!r}"
            continue
        if "error" in chunk:
            error = error or f"error event: {_error_message(chunk['error'])}"
            continue
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices:
            continue
        num_chunks += 1
        if first_choice_time is None:
            first_choice_time = time_s
        for choice in choices:
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            times = choice_times.setdefault(index, [])
            text, counts = _choice_text(choice, is_chat)
            reason = choice.get("finish_reason")
            if reason is not None:
                finish_reasons[index] = reason
            else:
                finish_reasons.setdefault(index, None)
            if counts:
                # Several choices in one chunk: one event per chunk and choice.
                times.append(time_s)
            elif reason is not None:
                textless_finish_times[index] = time_s
            if keep_text and text and index == 0:
                texts.append(text)
    num_usage_output_tokens = _int_or_none(usage, "completion_tokens")
    if num_usage_output_tokens is not None:
        missing = num_usage_output_tokens - sum(len(times) for times in choice_times.values())
        for index, finish_s in sorted(textless_finish_times.items()):
            times = choice_times[index]
            if missing > 0 and (not times or finish_s > times[-1]):
                times.append(finish_s)
                missing -= 1
    times = sorted(t for choice in choice_times.values() for t in choice)
    if not times and first_choice_time is not None:
        times.append(first_choice_time)
    return ParsedStream(
        event_times_s=times,
        text="".join(texts),
        num_usage_prompt_tokens=_int_or_none(usage, "prompt_tokens"),
        num_usage_output_tokens=num_usage_output_tokens,
        num_chunks=num_chunks,
        is_done=is_done,
        error=error,
        choice_event_times_s=dict(sorted(choice_times.items())),
        choice_finish_reasons=dict(sorted(finish_reasons.items())),
    )


def _int_or_none(usage: dict[str, Any] | None, key: str) -> int | None:
    if usage is None or not isinstance(usage.get(key), int):
        return None
    return usage[key]


def http_error_message(status: int, body: str) -> str:
    """'HTTP 503: <the server's error message>' (OpenAI's {"error": {"message"}} when present)."""
    message = body.strip()
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and "error" in payload:
            message = _error_message(payload["error"])
        elif isinstance(payload, dict) and "detail" in payload:
            message = str(payload["detail"])
    except ValueError:
        pass
    return f"HTTP {status}: {message[:200]}" if message else f"HTTP {status}"
