"""Tool-call parsers on hand-written outputs in each family's style: extract's exact result, and the
same result from the stream under many chunkings (every character, every split in two, seeded
random sizes); hypothesis for agreement on arbitrary texts made of the formats' pieces."""

from __future__ import annotations

import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.structured.tool_calls import StreamDelta, new_call_id, partial_marker_len
from corral.structured.tool_parsers import TOOL_CALL_PARSERS

WEATHER_PARIS = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
WEATHER_TOKYO = '{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}'
PARIS = ("get_weather", {"city": "Paris", "unit": "celsius"})
TOKYO = ("get_weather", {"city": "Tokyo", "unit": "celsius"})
# Strings with brackets, quotes, escapes and non-ASCII text, raw and \u-escaped.
TRICKY_ARGS = (
    r'{"path": "C:\\tmp\\{x}.txt", "code": "def f():\n    return {\"a\": [1, \"]}\"]}\n",'
    r' "regex": "^\\{[^}]*\\}$", "note": "naïve café ☕ 日本語 \u00e9 \ud83d\ude00",'
    r' "nested": {"list": [1, -2.5e3, true, false, null, {"deep": "]}"}], "empty": {}}}'
)
TRICKY = ("run_code", json.loads(TRICKY_ARGS))
TIME = ("get_time", {})


def hermes_call(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


SAME = "<the whole text is content>"
# (parser, text, content, [(name, arguments)])
CASES = [
    ("hermes", hermes_call(WEATHER_PARIS), None, [PARIS]),
    (
        "hermes",
        "I'll check both cities.\n\n"
        + hermes_call(WEATHER_PARIS)
        + "\n"
        + hermes_call(WEATHER_TOKYO),
        "I'll check both cities.\n\n",
        [PARIS, TOKYO],
    ),
    ("hermes", "\n\n" + hermes_call(WEATHER_PARIS) + "\n", None, [PARIS]),
    (
        "hermes",
        hermes_call('{"name": "run_code", "arguments": ' + TRICKY_ARGS + "}"),
        None,
        [TRICKY],
    ),
    ("hermes", '<tool_call>{"name":"get_time","arguments":{}}</tool_call>', None, [TIME]),
    ("hermes", hermes_call('{"name": "get_time"}'), None, [TIME]),
    ("hermes", hermes_call('{"name": "get_time", "parameters": {}}'), None, [TIME]),
    ("hermes", "<tool_call>\n" + WEATHER_PARIS + "\n", None, [PARIS]),
    ("hermes", hermes_call(WEATHER_PARIS) + "\nDone.", "\nDone.", [PARIS]),
    ("hermes", "The capital of France is Paris.", "The capital of France is Paris.", []),
    ("hermes", "", SAME, []),
    ("hermes", " \n ", " \n ", []),
    ("hermes", "Hello <tool_", "Hello <tool_", []),
    ("hermes", "<tool_call>", "<tool_call>", []),
    ("hermes", "<tool_call>\n" + WEATHER_PARIS + "\n</tool_", SAME, []),
    ("hermes", '<tool_call>\n{"name": "get_weather", "argu', SAME, []),
    ("hermes", hermes_call(WEATHER_PARIS[:-1]), SAME, []),
    ("hermes", hermes_call(WEATHER_PARIS + "}"), SAME, []),
    ("hermes", hermes_call('{"name": 7, "arguments": {}}'), SAME, []),
    ("hermes", hermes_call('{"name": "", "arguments": {}}'), SAME, []),
    ("hermes", hermes_call('{"name": "f", "arguments": "{\\"a\\": 1}"}'), SAME, []),
    ("hermes", hermes_call("{'name': 'f', 'arguments': {}}"), SAME, []),
    ("hermes", hermes_call('{"name": "f", "arguments": {"x": NaN}}'), SAME, []),
    ("hermes", hermes_call('["get_time"]'), SAME, []),
    (
        "hermes",
        "Wrap calls in <tool_call> tags, like this: " + hermes_call(WEATHER_PARIS),
        "Wrap calls in <tool_call> tags, like this: ",
        [PARIS],
    ),
    (
        "hermes",
        hermes_call(WEATHER_PARIS[:-1]) + "\n" + hermes_call(WEATHER_TOKYO),
        hermes_call(WEATHER_PARIS[:-1]) + "\n",
        [TOKYO],
    ),
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None,
        [PARIS],
    ),
    ("llama3_json", "<|python_tag|>" + WEATHER_PARIS, None, [PARIS]),
    ("llama3_json", " \n" + WEATHER_PARIS + "\n", None, [PARIS]),
    ("llama3_json", WEATHER_PARIS + "; " + WEATHER_TOKYO, None, [PARIS, TOKYO]),
    ("llama3_json", WEATHER_PARIS + ";" + WEATHER_TOKYO + ";", None, [PARIS, TOKYO]),
    ("llama3_json", WEATHER_PARIS + "\n" + WEATHER_TOKYO, None, [PARIS, TOKYO]),
    ("llama3_json", '{"name": "run_code", "parameters": ' + TRICKY_ARGS + "}", None, [TRICKY]),
    ("llama3_json", "Paris is the capital of France.", "Paris is the capital of France.", []),
    ("llama3_json", 'As JSON: {"city": "Paris"}', 'As JSON: {"city": "Paris"}', []),
    ("llama3_json", '{"city": "Paris"}', '{"city": "Paris"}', []),
    ("llama3_json", WEATHER_PARIS[:-1], WEATHER_PARIS[:-1], []),
    ("llama3_json", " <|python_tag|>" + WEATHER_PARIS[:-1], SAME, []),
    ("llama3_json", '<|python_tag|>print("hi")', '<|python_tag|>print("hi")', []),
    ("llama3_json", "<|python", "<|python", []),
    ("llama3_json", "", SAME, []),
    ("llama3_json", WEATHER_PARIS + '; {"name": 1}', '{"name": 1}', [PARIS]),
    ("llama3_json", WEATHER_PARIS + "\n\nLet me know.", "Let me know.", [PARIS]),
    ("llama3_json", WEATHER_PARIS + "; then {x}", "then {x}", [PARIS]),
    ("mistral", "[TOOL_CALLS] [" + WEATHER_PARIS + "]", None, [PARIS]),
    ("mistral", "[TOOL_CALLS][" + WEATHER_PARIS + ", " + WEATHER_TOKYO + "]", None, [PARIS, TOKYO]),
    (
        "mistral",
        "Sure, let me look that up.[TOOL_CALLS][" + WEATHER_PARIS + "]\n",
        "Sure, let me look that up.",
        [PARIS],
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "run_code", "arguments": ' + TRICKY_ARGS + "}]",
        None,
        [TRICKY],
    ),
    ("mistral", "No tools needed: 4.", "No tools needed: 4.", []),
    ("mistral", "[TOOL_CALLS][]", SAME, []),
    ("mistral", "[TOOL_CALLS]", SAME, []),
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {]', SAME, []),
    ("mistral", "[TOOL_CALLS][" + WEATHER_PARIS + ', {"arguments": {}}]', SAME, []),
    ("mistral", "[TOOL_CALLS]" + WEATHER_PARIS, SAME, []),
    ("mistral", "The [TOOL_CALLS] token marks calls.", "The [TOOL_CALLS] token marks calls.", []),
    ("mistral", "Wait [TOOL_", "Wait [TOOL_", []),
    (
        "mistral",
        "[TOOL_CALLS][" + WEATHER_PARIS + "] and [TOOL_CALLS][" + WEATHER_TOKYO + "]",
        " and ",
        [PARIS, TOKYO],
    ),
]
CASES = [
    (name, text, (text or None) if content == SAME else content, calls)
    for name, text, content, calls in CASES
]


def chunkings(text: str) -> list[list[str]]:
    """Whole, per character, every split in two, and seeded random chunk sizes."""
    out = [[text], list(text)]
    out += [[text[:cut], text[cut:]] for cut in range(1, len(text))]
    for seed in range(20):
        rng, pieces, pos = random.Random(seed), [], 0
        while pos < len(text):
            size = rng.randint(1, 12)
            pieces.append(text[pos : pos + size])
            pos += size
        out.append(pieces)
    return out


def run_stream(name: str, chunks: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Content and (name, arguments text) per call, from the deltas of one streamed output."""
    stream = TOOL_CALL_PARSERS.get(name)().stream()
    deltas: list[StreamDelta] = []
    for chunk in chunks:
        deltas += stream.feed(chunk)
    deltas += stream.finish()
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        assert delta.reasoning_content is None
        assert delta.content != ""
        for piece in delta.tool_calls:
            if piece.index not in calls:
                assert piece.index == len(calls)
                assert piece.id is not None and piece.name
                calls[piece.index] = [piece.name, ""]
            else:
                assert piece.id is None and piece.name is None
            calls[piece.index][1] += piece.arguments
    content = "".join(delta.content or "" for delta in deltas)
    return content or None, [(call_name, args) for call_name, args in calls.values()]


@pytest.mark.parametrize("name,text,content,calls", CASES)
def test_extract(name: str, text: str, content: str | None, calls: list) -> None:
    result = TOOL_CALL_PARSERS.get(name)().extract(text)
    assert result.content == content
    assert [(call.name, json.loads(call.arguments)) for call in result.tool_calls] == calls
    for call, (_, arguments) in zip(result.tool_calls, calls):
        assert call.arguments == json.dumps(arguments, ensure_ascii=False)
        assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert len({call.id for call in result.tool_calls}) == len(calls)


@pytest.mark.parametrize("name,text,content,calls", CASES)
def test_stream_agrees_with_extract(name: str, text: str, content: str | None, calls: list) -> None:
    expected = TOOL_CALL_PARSERS.get(name)().extract(text)
    for chunks in chunkings(text):
        streamed_content, streamed_calls = run_stream(name, chunks)
        assert streamed_content == expected.content, chunks
        assert [call_name for call_name, _ in streamed_calls] == [
            call.name for call in expected.tool_calls
        ]
        for (_, args), call in zip(streamed_calls, expected.tool_calls):
            assert json.loads(args) == json.loads(call.arguments)
            assert args == call.arguments


@pytest.mark.parametrize(
    "name,pieces,emitted",
    [
        ("hermes", ["Hello <tool_", "call>", "\n" + WEATHER_PARIS], ["Hello ", "", ""]),
        ("hermes", ["Use <tool_", "s> wisely"], ["Use ", "<tool_s> wisely"]),
        ("mistral", ["Ok [TOOL", "_CALLS", "] [{"], ["Ok ", "", ""]),
        ("llama3_json", [" <|python", "_tag|>", "{"], ["", "", ""]),
        ("llama3_json", [" <|py", "thon!"], ["", " <|python!"]),
    ],
)
def test_partial_markers_held_back(name: str, pieces: list[str], emitted: list[str]) -> None:
    stream = TOOL_CALL_PARSERS.get(name)().stream()
    for piece, expected in zip(pieces, emitted):
        deltas = stream.feed(piece)
        assert "".join(delta.content or "" for delta in deltas) == expected
        assert not any(delta.tool_calls for delta in deltas)


@pytest.mark.parametrize(
    "name,before,closing",
    [
        ("hermes", "Checking.\n<tool_call>\n" + WEATHER_PARIS + "\n", "</tool_call>"),
        ("mistral", "[TOOL_CALLS][" + WEATHER_PARIS, "]"),
        ("llama3_json", WEATHER_PARIS[:-1], "}"),
    ],
)
def test_call_streams_as_soon_as_it_closes(name: str, before: str, closing: str) -> None:
    stream = TOOL_CALL_PARSERS.get(name)().stream()
    assert not any(delta.tool_calls for delta in stream.feed(before))
    deltas = stream.feed(closing)
    assert [piece.name for delta in deltas for piece in delta.tool_calls if piece.name] == [
        "get_weather"
    ]
    arguments = "".join(piece.arguments for delta in deltas for piece in delta.tool_calls)
    assert json.loads(arguments) == PARIS[1]
    assert stream.finish() == []


def test_content_streams_without_waiting() -> None:
    for name in TOOL_CALL_PARSERS.names():
        stream = TOOL_CALL_PARSERS.get(name)().stream()
        assert [delta.content for delta in stream.feed("Paris is")] == ["Paris is"]


def test_call_formats() -> None:
    hermes = TOOL_CALL_PARSERS.get("hermes").call_format
    assert (hermes.prefix, hermes.suffix, hermes.per_call_wrap) == (
        "<tool_call>\n",
        "\n</tool_call>",
        True,
    )
    mistral = TOOL_CALL_PARSERS.get("mistral").call_format
    assert (mistral.prefix, mistral.array, mistral.arguments_key) == (
        "[TOOL_CALLS]",
        True,
        "arguments",
    )
    llama = TOOL_CALL_PARSERS.get("llama3_json").call_format
    assert (llama.arguments_key, llama.array) == ("parameters", False)


def test_helpers() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    assert partial_marker_len("abc <tool_", "<tool_call>") == 6
    assert partial_marker_len("abc <tool_call>", "<tool_call>") == 0
    assert partial_marker_len("<<", "<tool_call>") == 1
    assert partial_marker_len("", "<tool_call>") == 0


PIECES = [
    "<tool_call>", "</tool_call>", "<tool_", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]",
    '"', "\\", ",", ":", ";", " ", "\n", "name", '"name": ', '"arguments": ', '"parameters": ',
    '"f"', "1", "é😀", "text", WEATHER_PARIS, "[" + WEATHER_TOKYO + "]", hermes_call(WEATHER_PARIS),
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["hermes", "llama3_json", "mistral"]),
    parts=st.lists(st.sampled_from(PIECES), max_size=14),
    seed=st.integers(0, 2**16),
)
def test_stream_agrees_on_any_text(name: str, parts: list[str], seed: int) -> None:
    text = "".join(parts)
    expected = TOOL_CALL_PARSERS.get(name)().extract(text)
    rng, chunks, pos = random.Random(seed), [], 0
    while pos < len(text):
        size = rng.randint(1, 8)
        chunks.append(text[pos : pos + size])
        pos += size
    content, calls = run_stream(name, chunks)
    assert content == expected.content
    assert calls == [(call.name, call.arguments) for call in expected.tool_calls]
    if not calls:  # no text is lost
        assert content == (text or None)
