"""The reasoning parser interface, its registry, and the stream that all `<think>`-style parsers
share: reasoning between start_text and end_text, content after.

`extract(text)` is one `feed(text)` and a `finish()`, so a streamed output and the same output
parsed whole always agree. Reasoning has its leading and trailing whitespace removed, and content
after end_text its leading whitespace (the blank lines that templates put after the tag).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, NamedTuple

from corral.registry import Registry
from corral.structured.tool_calls import BufferedStream, StreamDelta, partial_marker_len


class ExtractedReasoning(NamedTuple):
    """A finished output split in two; None where a part is empty."""

    reasoning_content: str | None
    content: str | None


class _State(Enum):
    START = "start"  # whitespace so far, maybe the start of start_text
    REASONING = "reasoning"
    CONTENT_AFTER = "content_after"  # after end_text; leading whitespace is dropped
    CONTENT = "content"  # verbatim


class ReasoningStream(BufferedStream):
    """The incremental parser of one output. feed() each new piece of text, then finish() once."""

    def __init__(self, start_text: str, end_text: str, starts_in_reasoning: bool) -> None:
        super().__init__()
        self._start_text = start_text
        self._end_text = end_text
        self._starts_in_reasoning = starts_in_reasoning
        self._state = _State.START
        self._has_reasoning = False  # some reasoning has been emitted
        self._reasoning_ws = ""  # whitespace at the end of the reasoning so far, held back

    def _advance(self, is_final: bool) -> None:
        while True:
            if self._state is _State.START:
                rest = self._buf.lstrip()
                if rest.startswith(self._start_text):
                    self._buf = rest[len(self._start_text) :]
                    self._state = _State.REASONING
                elif self._start_text.startswith(rest) and not is_final:
                    return
                else:
                    reasoning = self._starts_in_reasoning
                    self._state = _State.REASONING if reasoning else _State.CONTENT
            elif self._state is _State.REASONING:
                end = self._buf.find(self._end_text)
                if end >= 0:
                    self._reasoning(self._buf[:end])
                    self._buf = self._buf[end + len(self._end_text) :]
                    self._state = _State.CONTENT_AFTER
                    continue
                keep = 0 if is_final else partial_marker_len(self._buf, self._end_text)
                self._reasoning(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return
            elif self._state is _State.CONTENT_AFTER:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return
                self._state = _State.CONTENT
            else:
                if self._buf:
                    self._out.append(StreamDelta(content=self._buf))
                self._buf = ""
                return

    def _reasoning(self, text: str) -> None:
        body = text.rstrip()
        if not body:
            self._reasoning_ws += text
            return
        if self._has_reasoning:
            body = self._reasoning_ws + body
        else:
            body = body.lstrip()
            self._has_reasoning = True
        self._reasoning_ws = text[len(text.rstrip()) :]
        self._out.append(StreamDelta(reasoning_content=body))


class ReasoningParser:
    """Splits a reasoning model's output into reasoning and content.

    start_text, end_text: the tags around the reasoning. starts_in_reasoning: the prompt already
    opened the reasoning, so output without start_text begins inside it.
    """

    start_text: ClassVar[str] = "<think>"
    end_text: ClassVar[str] = "</think>"
    starts_in_reasoning: ClassVar[bool] = False

    def extract(self, text: str) -> ExtractedReasoning:
        """Reasoning and content of a finished output."""
        stream = self.stream()
        deltas = stream.feed(text) + stream.finish()
        reasoning = "".join(delta.reasoning_content or "" for delta in deltas)
        content = "".join(delta.content or "" for delta in deltas)
        return ExtractedReasoning(reasoning or None, content or None)

    def stream(self) -> ReasoningStream:
        """A fresh incremental parser for one output."""
        return ReasoningStream(self.start_text, self.end_text, self.starts_in_reasoning)


REASONING_PARSERS = Registry[ReasoningParser]("reasoning parser")
