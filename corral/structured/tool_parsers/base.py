"""The tool-call parser interface, its registry, and what the families share.

Every parser works incrementally: `extract(text)` is one `feed(text)` and a `finish()`, so a
streamed output and the same output parsed whole always agree. A call is emitted only once it is
complete and valid (JSON with a non-empty string "name" and an object of arguments), because a
streamed delta cannot be taken back: text that looked like a call and is not one is content.

Arguments text, whole or streamed, is `json.dumps(arguments, ensure_ascii=False)` of the parsed
arguments object (the model's spacing is not kept); each call streams as two deltas, id and name,
then the whole arguments text.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from corral.registry import Registry
from corral.structured.tool_calls import (
    BufferedStream,
    CallFormat,
    ExtractedToolCalls,
    StreamDelta,
    ToolCall,
    ToolCallDelta,
    new_call_id,
    partial_marker_len,
)

# JSON's whitespace; what may stand between a call's markers and its JSON.
JSON_WS = " \t\n\r"
NON_WS = re.compile(r"[^ \t\n\r]")
_STRING_STOP = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'[\[\]{}"]')


class JsonSpan:
    """Finds, incrementally, where the JSON object or array starting at text[start] ends.

    Only brackets outside strings are counted; whether the span is valid JSON is for json.loads
    to say. `text` must only grow between calls.
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self._pos = start  # text[start:_pos] is scanned
        self._depth = 0
        self._in_string = False
        self._end: int | None = None

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket, or None while the value is still open."""
        pos = self._pos
        while self._end is None:
            if self._in_string:
                match = _STRING_STOP.search(text, pos)
                if match is None:
                    pos = len(text)
                    break
                if match.group() == "\\":
                    if match.end() >= len(text):  # the escaped character has not come yet
                        pos = match.start()
                        break
                    pos = match.end() + 1
                    continue
                self._in_string = False
                pos = match.end()
                continue
            match = _STRUCTURE.search(text, pos)
            if match is None:
                pos = len(text)
                break
            char, pos = match.group(), match.end()
            if char == '"':
                self._in_string = True
            elif char in "[{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._end = pos
        self._pos = pos
        return self._end


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str) -> object | None:
    """The parsed value of strict JSON text (no NaN or Infinity), or None when it is not JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None


class ParsedCall(NamedTuple):
    name: str
    arguments: str


def parse_call(value: object) -> ParsedCall | None:
    """A call from a parsed JSON object: {"name": non-empty string, "arguments" or "parameters":
    object}; no arguments key at all counts as {}. None when `value` is not such an object."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = value["arguments"] if "arguments" in value else value.get("parameters", {})
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(name, json.dumps(arguments, ensure_ascii=False))


class ToolCallStream(BufferedStream):
    """The parser of one streamed output. feed() each new piece of text, then finish() once."""

    def __init__(self) -> None:
        super().__init__()
        self.num_calls = 0

    def _emit_content(self, text: str) -> None:
        if text:
            self._out.append(StreamDelta(content=text))

    def _emit_call(self, call: ParsedCall) -> None:
        index = self.num_calls
        self.num_calls += 1
        head = ToolCallDelta(index=index, id=new_call_id(), name=call.name, arguments="")
        self._out.append(StreamDelta(tool_calls=[head]))
        body = ToolCallDelta(index=index, id=None, name=None, arguments=call.arguments)
        self._out.append(StreamDelta(tool_calls=[body]))


def collect(deltas: list[StreamDelta]) -> ExtractedToolCalls:
    """The finished output that a list of deltas adds up to."""
    content = "".join(delta.content for delta in deltas if delta.content)
    heads: dict[int, ToolCallDelta] = {}
    arguments: dict[int, list[str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            if piece.id is not None:
                heads[piece.index] = piece
            arguments.setdefault(piece.index, []).append(piece.arguments)
    calls = [
        ToolCall(id=head.id or "", name=head.name or "", arguments="".join(arguments[index]))
        for index, head in sorted(heads.items())
    ]
    return ExtractedToolCalls(content=content or None, tool_calls=calls)


class ToolCallParser(ABC):
    """Finds a model family's tool calls in its output; `call_format` says how it writes them."""

    call_format: ClassVar[CallFormat]

    def extract(self, text: str) -> ExtractedToolCalls:
        """Content and calls of a finished output. Never raises; text that is not a valid call is
        content (whitespace between calls aside)."""
        stream = self.stream()
        return collect(stream.feed(text) + stream.finish())

    @abstractmethod
    def stream(self) -> ToolCallStream:
        """A fresh incremental parser for one output."""


class BlockResult(NamedTuple):
    """How a call block after a marker ended: calls None means it is not a valid block (its
    marker is then content); end is where the block's text ends, in the text after the marker."""

    calls: list[ParsedCall] | None
    end: int


NOT_A_BLOCK = BlockResult(None, 0)


class CallBlock(ABC):
    """Reads the text after one call marker, which only grows between calls of advance().
    The block opens (after JSON whitespace) with a JSON value starting with `opener`."""

    opener: ClassVar[str]

    def __init__(self) -> None:
        self._span: JsonSpan | None = None

    @abstractmethod
    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        """The block's result once `text` decides it (always, when is_final), else None."""

    def _json_end(self, text: str, is_final: bool) -> int | BlockResult | None:
        """Where the opening JSON value ends in text; NOT_A_BLOCK if the text does not open
        with `opener` (or, at the end of the output, the value never closes); None while
        undecided."""
        if self._span is None:
            first = NON_WS.search(text)
            if first is None:
                return NOT_A_BLOCK if is_final else None
            if text[first.start()] != self.opener:
                return NOT_A_BLOCK
            self._span = JsonSpan(first.start())
        end = self._span.end(text)
        if end is None:
            return NOT_A_BLOCK if is_final else None
        return end

    def _json_text(self, text: str, end: int) -> str:
        assert self._span is not None
        return text[self._span.start : end]


class MarkedCallStream(ToolCallStream):
    """Content with call blocks, each starting at `marker` (Hermes, Mistral).

    Content is the text outside valid blocks, verbatim; when the output has a call, a stretch of
    content that is only whitespace (around and between calls) is dropped.
    """

    def __init__(self, marker: str, new_block: Callable[[], CallBlock]) -> None:
        super().__init__()
        self._marker = marker
        self._new_block = new_block
        # _buf holds content text, or the text after a block's marker.
        self._block: CallBlock | None = None
        self._pending_ws = ""  # whitespace that opens the current stretch of content
        self._stretch_has_text = False

    def _at_end(self) -> None:
        if self.num_calls == 0:
            self._emit_content(self._pending_ws)
        self._pending_ws = ""

    def _advance(self, is_final: bool) -> None:
        while True:
            if self._block is None:
                start = self._buf.find(self._marker)
                if start < 0:
                    keep = 0 if is_final else partial_marker_len(self._buf, self._marker)
                    self._content(self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep :]
                    return
                self._content(self._buf[:start])
                self._buf = self._buf[start + len(self._marker) :]
                self._block = self._new_block()
            result = self._block.advance(self._buf, is_final)
            if result is None:
                if not is_final:
                    return
                result = BlockResult(None, 0)  # a block must decide at the end; if not, content
            self._block = None
            if result.calls is None:
                self._content(self._marker)  # the rest is scanned again as content
                continue
            self._pending_ws, self._stretch_has_text = "", False
            for call in result.calls:
                self._emit_call(call)
            self._buf = self._buf[result.end :]

    def _content(self, text: str) -> None:
        if not text:
            return
        if not self._stretch_has_text:
            if not text.strip():
                self._pending_ws += text
                return
            text, self._pending_ws = self._pending_ws + text, ""
            self._stretch_has_text = True
        self._emit_content(text)


TOOL_CALL_PARSERS = Registry[ToolCallParser]("tool-call parser")
