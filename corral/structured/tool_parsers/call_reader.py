"""CallReader: one call object, streamed while the model writes it.

A call written as every family's format (and the grammar that forces one) writes it,
`{"name": "<name>", "arguments": {...}, ...}` ("parameters" for "arguments" too), is committed
once its arguments object opens: the sink hears its name then, and the arguments' canonical text
(json_stream.py) piece by piece as it comes. A committed call cannot be taken back: if its JSON
breaks off (the output ends, or a character strict JSON refuses), the call ends there with the
arguments written so far, and the family reads what follows as it reads what follows a call.

Any other opening (another first key, no arguments object after the name, an empty or
non-string name) is read whole: mode WHOLE, and the family parses the complete object as before
(whole_end gives its end).
"""

from __future__ import annotations

import json
import re
from typing import Protocol

from corral.structured.tool_parsers.json_stream import DONE, ERROR, JsonReader, JsonSpan

_CHARS = r'(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*'
_STRING = re.compile(f'"{_CHARS}"')
# A string that more text may still complete.
_OPEN_STRING = re.compile(f'"{_CHARS}' + r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")
_WS = " \t\n\r"
ARGUMENT_KEYS = ("arguments", "parameters")

# Modes of a CallReader.
PREFIX = "prefix"  # before the arguments object opens
ARGUMENTS = "arguments"  # committed: streaming the arguments
REST = "rest"  # committed: the members after the arguments, to the closing brace
COMPLETE = "complete"  # committed, the object closed: end is just past it
BROKEN = "broken"  # committed, the JSON broke off: end is where
WHOLE = "whole"  # not the streamable shape: read the object whole (whole_end)


class CallSink(Protocol):
    def start_call(self, name: str) -> int:
        """A new call with this name; returns its index."""

    def add_arguments(self, index: int, text: str) -> None:
        """The next piece of call `index`'s arguments text."""


class CallReader:
    """Reads the call object at text[start] ('{') of a text that only grows between calls."""

    def __init__(self, start: int, sink: CallSink) -> None:
        self.start = start
        self.mode = PREFIX
        self.end = -1  # COMPLETE, BROKEN: where the call's text ends
        self._sink = sink
        self._pos = start + 1
        self._step = 0  # how much of the opening has been read (see _PREFIX_STEPS)
        self._name = ""
        self._index = -1
        self._reader: JsonReader | None = None
        self._span: JsonSpan | None = None

    def advance(self, text: str, is_final: bool) -> str:
        """Reads what `text` decides; returns the mode."""
        if self.mode == PREFIX:
            self._prefix(text, is_final)
        if self.mode == ARGUMENTS:
            reader = self._reader
            assert reader is not None
            piece = reader.read(text, is_final)
            if piece:
                self._sink.add_arguments(self._index, piece)
            if reader.status == DONE:
                self.mode = REST
                self._reader = JsonReader(reader.pos, rest_of_object=True)
            else:
                self._settle(reader, text, is_final)
        if self.mode == REST:
            reader = self._reader
            assert reader is not None
            reader.read(text, is_final)
            if reader.status == DONE:
                self.mode, self.end = COMPLETE, reader.pos
            else:
                self._settle(reader, text, is_final)
        return self.mode

    def whole_end(self, text: str, is_final: bool) -> int | None:
        """WHOLE: where the object ends (just past its closing brace); None while open; -1 when
        the output ended with it open."""
        if self._span is None:
            self._span = JsonSpan(self.start)
        end = self._span.end(text)
        if end is None:
            return -1 if is_final else None
        return end

    def _settle(self, reader: JsonReader, text: str, is_final: bool) -> None:
        if reader.status == ERROR:
            self.mode, self.end = BROKEN, reader.pos
        elif is_final:
            self.mode, self.end = BROKEN, len(text)

    def _prefix(self, text: str, is_final: bool) -> None:
        """Reads `"name": "<name>", "arguments": {` step by step; commits or turns WHOLE."""
        while self.mode == PREFIX:
            pos = self._pos
            while pos < len(text) and text[pos] in _WS:
                pos += 1
            if pos == len(text):
                if is_final:
                    self.mode = WHOLE
                return
            expected = _PREFIX_STEPS[self._step]
            if expected != '"':
                if text[pos] != expected:
                    self.mode = WHOLE
                    return
                self._pos = pos + 1
            else:
                match = _STRING.match(text, pos)
                if match is None:
                    open_ = _OPEN_STRING.match(text, pos)
                    if not is_final and open_ is not None and open_.end() == len(text):
                        return  # the string goes on
                    self.mode = WHOLE
                    return
                if not self._string_fits(json.loads(match.group())):
                    self.mode = WHOLE
                    return
                self._pos = match.end()
            self._step += 1
            if self._step == len(_PREFIX_STEPS):  # the arguments object opened at text[pos]
                self.mode = ARGUMENTS
                self._index = self._sink.start_call(self._name)
                self._reader = JsonReader(pos)

    def _string_fits(self, value: str) -> bool:
        """Whether a string of the opening is what that step needs."""
        if self._step == 0:
            return value == "name"
        if self._step == 2:
            self._name = value
            return bool(value)
        return value in ARGUMENT_KEYS


# `{` was read; then key "name", `:`, the name, `,`, key "arguments" or "parameters", `:`, `{`.
_PREFIX_STEPS = ('"', ":", '"', ",", '"', ":", "{")
