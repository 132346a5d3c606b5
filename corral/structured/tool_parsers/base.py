"""The tool-call parser interface, its registry, and what the families share.

Every parser works incrementally: `extract(text)` is one `feed(text)` and a `finish()`, so a
streamed output and the same output parsed whole always agree, to the character.

A call object that opens as `{"name": "<name>", "arguments": {` ("parameters" too) streams as it
is written (call_reader.py): a first delta with its id and name once its arguments object opens,
then the arguments' text piece by piece. A streamed delta cannot be taken back, so such a call
stands even if its JSON later breaks off (the output ends, or the model writes something strict
JSON refuses): its arguments are then what was written up to that point. A call object of any
other shape is read whole and emitted once complete and valid (a non-empty string "name" and an
object of arguments); text that looked like one and is not is content.

Arguments text is canonical JSON: for a complete call, `json.dumps(arguments, ensure_ascii=False)`
of the parsed arguments object (the model's spacing is not kept; json_stream.py).
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
from corral.structured.tool_parsers.call_reader import BROKEN, COMPLETE, WHOLE, CallReader

# JSON's whitespace; what may stand between a call's markers and its JSON.
JSON_WS = " \t\n\r"
NON_WS = re.compile(r"[^ \t\n\r]")


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

    def start_call(self, name: str) -> int:
        """A new call's first delta (id and name); returns its index (CallSink)."""
        index = self.num_calls
        self.num_calls += 1
        head = ToolCallDelta(index=index, id=new_call_id(), name=name, arguments="")
        self._out.append(StreamDelta(tool_calls=[head]))
        return index

    def add_arguments(self, index: int, text: str) -> None:
        """The next piece of call `index`'s arguments (CallSink); joined to the previous
        delta when that carries only arguments of the same call."""
        out = self._out
        if out and not out[-1].content and len(out[-1].tool_calls) == 1:
            last = out[-1].tool_calls[0]
            if last.index == index and last.id is None:
                merged = ToolCallDelta(index, None, None, last.arguments + text)
                out[-1] = StreamDelta(tool_calls=[merged])
                return
        out.append(StreamDelta(tool_calls=[ToolCallDelta(index, None, None, text)]))

    def emit_call(self, call: ParsedCall) -> None:
        """A call read whole: its first delta, then all of its arguments."""
        self.add_arguments(self.start_call(call.name), call.arguments)


class CallEnd(NamedTuple):
    """A call object read to its end (read_call). is_streamed: the sink has had all of it; else
    call is the call read whole (None: the object is not a call, or never closed)."""

    end: int  # where the object's text ends (-1: it never closed)
    is_streamed: bool
    call: ParsedCall | None


def read_call(reader: CallReader, text: str, is_final: bool) -> CallEnd | None:
    """Advance a CallReader over `text`; None while `text` cannot decide the call."""
    mode = reader.advance(text, is_final)
    if mode in (COMPLETE, BROKEN):
        return CallEnd(reader.end, True, None)
    if mode != WHOLE:
        return None
    end = reader.whole_end(text, is_final)
    if end is None:
        return None
    if end < 0:
        return CallEnd(end, False, None)
    return CallEnd(end, False, parse_call(load_json(text[reader.start : end])))


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
    """Reads the text after one call marker, which only grows between calls of advance(); calls
    that stream go to the sink as they come. The block opens (after JSON whitespace) with
    `opener`."""

    opener: ClassVar[str]

    def __init__(self, sink: ToolCallStream) -> None:
        self.sink = sink

    @abstractmethod
    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        """The block's result once `text` decides it (always, when is_final), else None. A
        block that streamed a call never answers NOT_A_BLOCK."""

    def _opening(self, text: str, is_final: bool) -> int | BlockResult | None:
        """Where `opener` stands in text; NOT_A_BLOCK if the text opens otherwise (or, at the
        end of the output, not at all); None while only whitespace came."""
        first = NON_WS.search(text)
        if first is None:
            return NOT_A_BLOCK if is_final else None
        if text[first.start()] != self.opener:
            return NOT_A_BLOCK
        return first.start()


class MarkedCallStream(ToolCallStream):
    """Content with call blocks, each starting at `marker` (Hermes, Mistral).

    Content is the text outside valid blocks, verbatim; when the output has a call, a stretch of
    content that is only whitespace (around and between calls) is dropped.
    """

    def __init__(self, marker: str, new_block: Callable[[ToolCallStream], CallBlock]) -> None:
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
                self._block = self._new_block(self)
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
                self.emit_call(call)
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
