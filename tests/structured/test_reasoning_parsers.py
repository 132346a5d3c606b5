"""Reasoning parsers on hand-written outputs: extract's exact result, and the same result from the
stream under many chunkings; hypothesis for agreement on arbitrary texts made of the tags."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.structured.reasoning_parsers import REASONING_PARSERS
from corral.structured.tool_calls import StreamDelta
from tests.structured.test_tool_parsers import chunkings

THOUGHT = 'The user asks for 17 * 23.\n17 * 20 = 340, 17 * 3 = 51, so 391. Check: {"a": 1} <b>.'
ANSWER = "17 × 23 = **391**.\n"

# (parser, text, reasoning_content, content)
CASES = [
    ("think", f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", THOUGHT, ANSWER),
    ("think", f"\n<think>{THOUGHT}</think>{ANSWER}", THOUGHT, ANSWER),
    ("think", "<think>\n\n</think>\n\nHello!", None, "Hello!"),
    ("think", f"<think>\n{THOUGHT}", THOUGHT, None),
    ("think", f"<think>{THOUGHT}</thi", THOUGHT + "</thi", None),
    ("think", f"<think>{THOUGHT}</think>\n\n", THOUGHT, None),
    ("think", ANSWER, None, ANSWER),
    ("think", f"  {THOUGHT}</think>{ANSWER}", None, f"  {THOUGHT}</think>{ANSWER}"),
    ("think", "Use <think> tags.", None, "Use <think> tags."),
    ("think", "<thin", None, "<thin"),
    ("think", " \n", None, " \n"),
    ("think", "", None, None),
    ("think", "<think>a</think>b<think>c</think>", "a", "b<think>c</think>"),
    ("think", "<think>日本語 😀 </think> café", "日本語 😀", "café"),
    ("deepseek_r1", f"{THOUGHT}\n</think>\n\n{ANSWER}", THOUGHT, ANSWER),
    ("deepseek_r1", f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", THOUGHT, ANSWER),
    ("deepseek_r1", f"{THOUGHT}\n\n", THOUGHT, None),
    ("deepseek_r1", f"{THOUGHT}</th", THOUGHT + "</th", None),
    ("deepseek_r1", f"</think>{ANSWER}", None, ANSWER),
    ("deepseek_r1", "<thi", "<thi", None),
    ("deepseek_r1", "Okay, so <think> is a tag.</think>Yes.", "Okay, so <think> is a tag.", "Yes."),
    ("deepseek_r1", "", None, None),
]


def run_stream(name: str, chunks: list[str]) -> tuple[str | None, str | None]:
    stream = REASONING_PARSERS.get(name)().stream()
    deltas: list[StreamDelta] = []
    for chunk in chunks:
        deltas += stream.feed(chunk)
    deltas += stream.finish()
    for delta in deltas:
        assert not delta.tool_calls and delta.content != "" and delta.reasoning_content != ""
    reasoning = "".join(delta.reasoning_content or "" for delta in deltas)
    content = "".join(delta.content or "" for delta in deltas)
    return reasoning or None, content or None


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_extract(name: str, text: str, reasoning: str | None, content: str | None) -> None:
    assert REASONING_PARSERS.get(name)().extract(text) == (reasoning, content)


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_stream_agrees_with_extract(
    name: str, text: str, reasoning: str | None, content: str | None
) -> None:
    for chunks in chunkings(text):
        assert run_stream(name, chunks) == (reasoning, content), chunks


def test_partial_tags_held_back() -> None:
    stream = REASONING_PARSERS.get("deepseek_r1")().stream()
    assert stream.feed("Let me think.\n</th") == [StreamDelta(reasoning_content="Let me think.")]
    assert stream.feed("ink>") == []
    assert stream.feed("\n\nIt is ") == [StreamDelta(content="It is ")]
    assert stream.feed("4.") == [StreamDelta(content="4.")]
    assert stream.finish() == []
    stream = REASONING_PARSERS.get("think")().stream()
    assert stream.feed(" <thi") == []
    assert stream.feed("nk>Hm") == [StreamDelta(reasoning_content="Hm")]
    stream = REASONING_PARSERS.get("think")().stream()
    assert stream.feed(" <thi") == []
    assert stream.feed("s") == [StreamDelta(content=" <this")]


def test_registry() -> None:
    assert REASONING_PARSERS.names() == ["deepseek_r1", "think"]
    parser = REASONING_PARSERS.get("think")
    assert (parser.start_text, parser.end_text) == ("<think>", "</think>")


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["think", "deepseek_r1"]),
    parts=st.lists(
        st.sampled_from(["<think>", "</think>", "<th", "</", " ", "\n", "a", "é😀", ">"]),
        max_size=12,
    ),
    seed=st.integers(0, 2**16),
)
def test_stream_agrees_on_any_text(name: str, parts: list[str], seed: int) -> None:
    text = "".join(parts)
    rng, chunks, pos = random.Random(seed), [], 0
    while pos < len(text):
        size = rng.randint(1, 6)
        chunks.append(text[pos : pos + size])
        pos += size
    assert run_stream(name, chunks) == REASONING_PARSERS.get(name)().extract(text)
