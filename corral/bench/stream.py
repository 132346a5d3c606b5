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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class ParsedStream:
    event_times_s: list[float]
    text: str  # the generated text, joined ("" unless keep_text)
    num_usage_prompt_tokens: int | None
    num_usage_output_tokens: int | None
    num_chunks: int  # data chunks with choices
    is_done: bool  # the [DONE] sentinel arrived
    error: str | None  # an error event inside the stream


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
    times: list[float] = []
    texts: list[str] = []
    first_choice_time: float | None = None
    textless_finish_time: float | None = None  # the last finish chunk that was not an event
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
        is_event = is_finish = False
        for choice in choices:
            text, counts = _choice_text(choice, is_chat)
            is_event = is_event or counts
            is_finish = is_finish or choice.get("finish_reason") is not None
            if keep_text and text:
                texts.append(text)
        if is_event:
            times.append(time_s)
        elif is_finish:
            textless_finish_time = time_s
    num_usage_output_tokens = _int_or_none(usage, "completion_tokens")
    if (
        textless_finish_time is not None
        and num_usage_output_tokens is not None
        and len(times) < num_usage_output_tokens
        and (not times or textless_finish_time > times[-1])
    ):
        times.append(textless_finish_time)
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
