"""Parsing a streamed body: which chunks are output events, usage, errors, a missing [DONE]."""

from __future__ import annotations

from corral.bench.stream import http_error_message, parse_stream
from tests.bench.scripted import DONE_LINE, chat_chunk, completion_chunk, usage_chunk


def timed(*lines: bytes) -> list[tuple[float, bytes]]:
    return [(float(index), line) for index, line in enumerate(lines)]


def test_completion_events_include_empty_text_tokens_but_not_finish_only_chunks():
    parsed = parse_stream(
        timed(
            completion_chunk("a"),
            b"\n",
            b": a comment\n",
            completion_chunk(""),  # a token whose text is held back (t = 3)
            completion_chunk("b"),
            completion_chunk("", "stop"),  # finish only (t = 5)
            usage_chunk(3, 3),
            DONE_LINE,
            completion_chunk("after done"),
        ),
        is_chat=False,
        keep_text=True,
    )
    assert parsed.event_times_s == [0.0, 3.0, 4.0]
    assert parsed.text == "ab"
    assert (parsed.num_usage_prompt_tokens, parsed.num_usage_output_tokens) == (3, 3)
    assert parsed.num_chunks == 4 and parsed.is_done and parsed.error is None


def test_a_textless_last_token_arriving_with_the_finish_reason_is_an_event():
    # Every token decodes to "" and the last one comes with finish_reason: the usage says there
    # were three tokens, so the finish chunk carried the third.
    chunks = [completion_chunk(""), completion_chunk(""), completion_chunk("", "length")]
    parsed = parse_stream(timed(*chunks, usage_chunk(5, 3), DONE_LINE), is_chat=False)
    assert parsed.event_times_s == [0.0, 1.0, 2.0]
    # Without usage the count is unknown: a finish-only chunk stays out.
    no_usage = parse_stream(timed(*chunks, DONE_LINE), is_chat=False)
    assert no_usage.event_times_s == [0.0, 1.0]
    chat = [chat_chunk("", role="assistant"), chat_chunk(""), chat_chunk(None, finish="length")]
    parsed = parse_stream(timed(*chat, usage_chunk(5, 2), DONE_LINE), is_chat=True)
    assert parsed.event_times_s == [1.0, 2.0]


def test_chat_role_chunk_is_not_an_event():
    parsed = parse_stream(
        timed(
            chat_chunk("", role="assistant"),
            chat_chunk("Hi"),
            chat_chunk(None, finish="stop"),
            DONE_LINE,
        ),
        is_chat=True,
    )
    assert parsed.event_times_s == [1.0]
    assert parsed.num_usage_output_tokens is None
    assert parsed.text == ""  # keep_text off


def test_a_single_textless_token_still_gives_a_first_token_time():
    parsed = parse_stream(timed(completion_chunk("", "length"), DONE_LINE), is_chat=False)
    assert parsed.event_times_s == [0.0]


def test_error_event_missing_done_and_garbage_are_reported():
    error = b'data: {"error": {"message": "engine died", "type": "internal"}}\n'
    parsed = parse_stream(timed(completion_chunk("a"), error, DONE_LINE), is_chat=False)
    assert parsed.error == "error event: engine died"
    cut = parse_stream(timed(completion_chunk("a"), completion_chunk("b")), is_chat=False)
    assert not cut.is_done and cut.error is None and cut.num_chunks == 2
    garbage = parse_stream(timed(b"data: {not json\n", DONE_LINE), is_chat=False)
    assert garbage.error is not None and garbage.error.startswith("malformed stream chunk")


def test_http_error_messages_use_the_openai_error_body():
    assert http_error_message(400, '{"error": {"message": "bad max_tokens"}}') == (
        "HTTP 400: bad max_tokens"
    )
    assert http_error_message(404, '{"detail": "Not Found"}') == "HTTP 404: Not Found"
    assert http_error_message(502, "<html>bad gateway</html>") == (
        "HTTP 502: <html>bad gateway</html>"
    )
    assert http_error_message(503, "") == "HTTP 503"
