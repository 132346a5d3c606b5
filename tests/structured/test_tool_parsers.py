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
    # A call that streamed stands (its arguments opened); what follows its object, if not its
    # closing tag, is content: a cut-off tag, an extra brace, the rest after a NaN.
    ("hermes", "<tool_call>\n" + WEATHER_PARIS + "\n</tool_", "\n</tool_", [PARIS]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "argu', SAME, []),
    ("hermes", hermes_call(WEATHER_PARIS[:-1]), None, [PARIS]),
    ("hermes", hermes_call(WEATHER_PARIS + "}"), "}\n</tool_call>", [PARIS]),
    ("hermes", hermes_call('{"name": 7, "arguments": {}}'), SAME, []),
    ("hermes", hermes_call('{"name": "", "arguments": {}}'), SAME, []),
    ("hermes", hermes_call('{"name": "f", "arguments": "{\\"a\\": 1}"}'), SAME, []),
    ("hermes", hermes_call("{'name': 'f', 'arguments': {}}"), SAME, []),
    (
        "hermes",
        hermes_call('{"name": "f", "arguments": {"x": NaN}}'),
        "NaN}}\n</tool_call>",
        [("f", '{"x": ')],  # the arguments as far as they were valid JSON
    ),
    # Not opening as name then arguments: read whole, and not a call.
    ("hermes", hermes_call('{"arguments": {}, "name": "f", "x": NaN}'), SAME, []),
    ("hermes", hermes_call('{"arguments": {"a": 1}, "name": "f"}'), None, [("f", {"a": 1})]),
    (
        "hermes",
        hermes_call('{"name": "f", "id": 1, "arguments": {"a": [1]}}'),
        None,
        [("f", {"a": [1]})],
    ),
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
        None,
        [PARIS, TOKYO],
    ),
    (
        "hermes",
        hermes_call('{"name": "get_time", "arguments": {}') + hermes_call(WEATHER_TOKYO[:-1]),
        None,
        [TIME, TOKYO],
    ),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": "tru', None, [("f", '{"a": "tru')]),
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
    ("llama3_json", WEATHER_PARIS[:-1], None, [PARIS]),
    ("llama3_json", " <|python_tag|>" + WEATHER_PARIS[:-1], None, [PARIS]),
    ("llama3_json", '{"parameters": {}, "name": "f"', SAME, []),
    ("llama3_json", '{"name": "f", "parameters": {"a": 1}, "x": ]', "]", [("f", {"a": 1})]),
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
    ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {]', None, [("a", "{")]),
    (
        "mistral",
        "[TOOL_CALLS][" + WEATHER_PARIS + ', {"arguments": {}}]',
        ', {"arguments": {}}]',
        [PARIS],
    ),
    ("mistral", '[TOOL_CALLS][{"arguments": {}}, ' + WEATHER_PARIS + "]", SAME, []),
    ("mistral", '[TOOL_CALLS][{"name": "get_time"}, ' + WEATHER_TOKYO, None, [TIME, TOKYO]),
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


def arguments_text(arguments: dict | str) -> str:
    """A case's arguments: an object (its canonical JSON text), or the text itself (a call that
    broke off)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


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
    assert [(call.name, call.arguments) for call in result.tool_calls] == [
        (call_name, arguments_text(arguments)) for call_name, arguments in calls
    ]
    for call in result.tool_calls:
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
            assert args == call.arguments


@pytest.mark.parametrize(
    "name,pieces,emitted",
    [
        ("hermes", ["Hello <tool_", "call>", '\n{"name": "get_weather"'], ["Hello ", "", ""]),
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
        ("hermes", "Checking.\n<tool_call>\n", "}}\n</tool_call>"),
        ("mistral", "[TOOL_CALLS][", "}}]"),
        ("llama3_json", "<|python_tag|>", "}}"),
    ],
)
def test_arguments_stream_as_they_are_written(name: str, before: str, closing: str) -> None:
    stream = TOOL_CALL_PARSERS.get(name)().stream()
    key = "parameters" if name == "llama3_json" else "arguments"
    # No call before its arguments open: the name alone could still belong to a non-call.
    opening = stream.feed(before + '{"name": "get_weather", "' + key + '": ')
    assert not any(delta.tool_calls for delta in opening)
    head, *first = stream.feed('{"city": "Pa')
    assert [(piece.index, piece.name, piece.arguments) for piece in head.tool_calls] == [
        (0, "get_weather", "")
    ]
    assert head.tool_calls[0].id is not None
    pieces = [first]
    for text in ('ris", "unit"', ': "celsius"', closing):
        pieces.append(stream.feed(text))
    pieces.append(stream.finish())
    arguments = [
        "".join(piece.arguments for delta in deltas for piece in delta.tool_calls)
        for deltas in pieces
    ]
    # Each piece of text brings the arguments it decides; the closing brace of the call (and
    # its tag or array) brings only the arguments' own closing brace.
    assert arguments == ['{"city": "Pa', 'ris", "unit"', ': "celsius"', "}", ""]
    assert all(piece.id is None for deltas in pieces for d in deltas for piece in d.tool_calls)
    assert json.loads("".join(arguments)) == PARIS[1]


def test_arguments_are_canonical_while_they_stream() -> None:
    """Spacing goes, escapes are rewritten as json.dumps writes them, numbers as Python prints
    them; a number or an escape waits until the text decides it."""
    stream = TOOL_CALL_PARSERS.get("llama3_json")().stream()
    fed = []
    for text in [
        '{"name":"f","parameters":{ "n" :1',
        "2.50e1 ,",
        ' "s":"caf\\u00',
        "e9 \\ud83d",
        "\\ude00\\/",
    ]:
        fed.append("".join(p.arguments for d in stream.feed(text) for p in d.tool_calls))
    fed.append("".join(p.arguments for d in stream.feed('"}}') for p in d.tool_calls))
    assert fed == ['{"n": ', "125.0, ", '"s": "caf', "é ", "😀/", '"}']
    assert stream.finish() == []


# Outputs as each family writes them (hand-written in the formats of the models' chat templates:
# Qwen 2.5 for hermes, Llama 3.1 for llama3_json, Mistral Small for mistral), several calls,
# arguments with code, newlines, escapes and nesting.
SEARCH_ARGS = '{"query": "weather \\"Paris\\" today", "max_results": 5, "lang": "fr"}'
CODE_ARGS = (
    '{"language": "python", "code": "def mean(xs):\\n    return sum(xs) / len(xs)\\n'
    'print(mean([1, 2, 3]))", "timeout_s": 2.5, "env": {"PATH": "/usr/bin", "DEBUG": null}}'
)
FAMILY_OUTPUTS = {
    "hermes": "I'll search first, then run the code.\n<tool_call>\n"
    '{"name": "web_search", "arguments": ' + SEARCH_ARGS + "}\n</tool_call>\n<tool_call>\n"
    '{"name": "run_python", "arguments": ' + CODE_ARGS + "}\n</tool_call>",
    "llama3_json": '<|python_tag|>{"name": "web_search", "parameters": ' + SEARCH_ARGS + "}; "
    '{"name": "run_python", "parameters": ' + CODE_ARGS + "}",
    "mistral": '[TOOL_CALLS] [{"name": "web_search", "arguments": ' + SEARCH_ARGS + "}, "
    '{"name": "run_python", "arguments": ' + CODE_ARGS + "}]",
}


@pytest.mark.parametrize("name", sorted(FAMILY_OUTPUTS))
def test_family_outputs_stream_piecewise_at_every_cut(name: str) -> None:
    text = FAMILY_OUTPUTS[name]
    expected = TOOL_CALL_PARSERS.get(name)().extract(text)
    assert [(call.name, json.loads(call.arguments)) for call in expected.tool_calls] == [
        ("web_search", json.loads(SEARCH_ARGS)),
        ("run_python", json.loads(CODE_ARGS)),
    ]
    for chunks in chunkings(text):
        stream = TOOL_CALL_PARSERS.get(name)().stream()
        deltas = [delta for chunk in chunks for delta in stream.feed(chunk)] + stream.finish()
        fragments: dict[int, list[str]] = {}
        for delta in deltas:
            for piece in delta.tool_calls:
                fragments.setdefault(piece.index, []).append(piece.arguments)
        joined = ["".join(pieces) for _, pieces in sorted(fragments.items())]
        assert joined == [call.arguments for call in expected.tool_calls], chunks
        if len(chunks) == len(text):  # a character at a time: each call over many deltas
            assert all(len([p for p in pieces if p]) > 10 for pieces in fragments.values())


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
