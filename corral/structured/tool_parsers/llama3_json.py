"""Llama 3.x JSON calls: the whole output is `{"name": ..., "parameters": {...}}`, optionally after
`<|python_tag|>`, or several such objects separated by `;`.

An output that does not start (after whitespace) with `{` or the tag is content, all of it, and so
is one whose first object is not a call. After a call, text that is neither whitespace, `;` nor
another object is content from its first character to the end. A call that streamed (base.py)
and broke off ends where its JSON did; what follows is read as what follows a call.
"""

from __future__ import annotations

from enum import Enum

from corral.structured.tool_calls import CallFormat
from corral.structured.tool_parsers.base import (
    NON_WS,
    TOOL_CALL_PARSERS,
    ToolCallParser,
    ToolCallStream,
    read_call,
)
from corral.structured.tool_parsers.call_reader import CallReader

PYTHON_TAG = "<|python_tag|>"


class _State(Enum):
    START = "start"  # before the first non-whitespace character
    OBJECT = "object"  # a call object is due
    AFTER_CALL = "after_call"  # whitespace, then `;`, another object, content or the end
    CONTENT = "content"  # everything from here on is content


class Llama3JsonStream(ToolCallStream):
    """The incremental parser of one Llama 3 JSON output."""

    def __init__(self) -> None:
        super().__init__()
        self._state = _State.START
        self._head = ""  # consumed before the first object (whitespace, tag): content if it fails
        self._reader: CallReader | None = None

    def _advance(self, is_final: bool) -> None:
        while True:
            if self._state is _State.CONTENT:
                self._emit_content(self._buf)
                self._buf = ""
                return
            if self._state is _State.START:
                if not self._start(is_final):
                    return
            elif self._state is _State.OBJECT:
                if not self._object(is_final):
                    return
            else:
                first = NON_WS.search(self._buf)
                if first is None:
                    self._buf = ""  # whitespace after a call is dropped
                    return
                self._buf = self._buf[first.start() :]
                if self._buf[0] == ";":
                    self._buf = self._buf[1:]
                    self._state = _State.OBJECT
                elif self._buf[0] == "{":
                    self._state = _State.OBJECT
                else:
                    self._state = _State.CONTENT

    def _start(self, is_final: bool) -> bool:
        """Leaves START when the opening decides it; False while it cannot yet."""
        first = NON_WS.search(self._buf)
        if first is None:
            if not is_final:
                return False
            self._state = _State.CONTENT
            return True
        rest = self._buf[first.start() :]
        if rest.startswith(PYTHON_TAG):
            cut = first.start() + len(PYTHON_TAG)
        elif rest[0] == "{":
            cut = first.start()
        elif PYTHON_TAG.startswith(rest) and not is_final:
            return False
        else:
            self._state = _State.CONTENT
            return True
        self._head, self._buf = self._buf[:cut], self._buf[cut:]
        self._state = _State.OBJECT
        return True

    def _object(self, is_final: bool) -> bool:
        """Reads one call object; False while the text so far cannot decide it."""
        if self._reader is None:
            first = NON_WS.search(self._buf)
            if first is None:
                if is_final:
                    self._fail(len(self._buf))
                return is_final
            if self._buf[first.start()] != "{":
                self._fail(first.start())
                return True
            self._reader = CallReader(first.start(), self)
        reader = self._reader
        call_end = read_call(reader, self._buf, is_final)
        if call_end is None:
            return False
        self._reader = None
        if not call_end.is_streamed:
            if call_end.call is None:
                self._fail(reader.start)
                return True
            self.emit_call(call_end.call)
        # A streamed call that broke off ends there: what follows is read as after a call.
        self._buf = self._buf[call_end.end :]
        self._state = _State.AFTER_CALL
        return True

    def _fail(self, start: int) -> None:
        """The object due at buf[start] is not a call: content from there (from the very start of
        the output, when there is no call yet)."""
        if self.num_calls == 0:
            self._buf = self._head + self._buf
        else:
            self._buf = self._buf[start:]
        self._state = _State.CONTENT


@TOOL_CALL_PARSERS.register("llama3_json")
class Llama3JsonToolCallParser(ToolCallParser):
    """Llama 3.1 / 3.2 / 3.3 JSON-based tool calls."""

    call_format = CallFormat(
        prefix="",
        suffix="",
        separator="; ",
        array=False,
        arguments_key="parameters",
        per_call_wrap=False,
    )

    def stream(self) -> ToolCallStream:
        """A fresh incremental parser for one output."""
        return Llama3JsonStream()
