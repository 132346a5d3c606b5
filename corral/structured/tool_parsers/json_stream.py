"""Incremental JSON: JsonSpan finds where a value ends; JsonReader reads strict JSON and writes
it back in one canonical form.

The canonical text of a value is what `json.dumps(value, ensure_ascii=False)` writes for the
value `json.loads` reads (no whitespace outside strings but the ", " and ": " separators,
strings re-escaped, numbers as Python prints them), except that an object's repeated keys are
all kept. It comes out token by token as the text grows, and a token is written only once the
text decides it, so the pieces never depend on where the text was cut.
"""

from __future__ import annotations

import json
import re

_WS = " \t\n\r"
_STRING_STOP = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'[\[\]{}"]')
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')  # a run of string characters that need no escape
_SCALAR = re.compile(r"[0-9A-Za-z.+\-]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
# What may still become a \uXXXX escape (or, for _PARTIAL_ESCAPE, any escape) with more text.
_PARTIAL_U_ESCAPE = re.compile(r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_PUNCTUATION = {"{": "{", "}": "}", "[": "[", "]": "]", ",": ", ", ":": ": "}

# States: what the reader expects next.
_VALUE, _FIRST_VALUE, _FIRST_KEY, _KEY, _COLON, _AFTER, _STRING = range(7)
OPEN, DONE, ERROR = "open", "done", "error"


def _canonical(text: str) -> str:
    """String content (decoded) as json.dumps writes it, without the quotes."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


class JsonReader:
    """Reads one JSON value from `pos` of a text that only grows between calls of read(); with
    rest_of_object=True, the rest of an object whose last value was just read (`,` and more
    members, or the closing `}`).

    status: OPEN while the value goes on; DONE once it closed (pos just past it); ERROR at the
    first character that strict JSON (no NaN, no Infinity, no control characters in strings)
    refuses (pos at it).
    """

    def __init__(self, pos: int, rest_of_object: bool = False) -> None:
        self.pos = pos
        self.status = OPEN
        self._stack: list[str] = ["{"] if rest_of_object else []
        self._state = _AFTER if rest_of_object else _VALUE

    def read(self, text: str, is_final: bool) -> str:
        """The canonical text of what `text` decided since the last call."""
        out: list[str] = []
        while self.status is OPEN and self._step(text, is_final, out):
            pass
        return "".join(out)

    def _step(self, text: str, is_final: bool, out: list[str]) -> bool:
        """Reads one token; False when the text so far cannot decide the next one."""
        if self._state == _STRING:
            return self._string(text, is_final, out)
        pos, size = self.pos, len(text)
        while pos < size and text[pos] in _WS:
            pos += 1
        self.pos = pos
        if pos == size:
            return False
        char, state = text[pos], self._state
        if state == _COLON:
            return self._punctuation(char, ":", _VALUE, out)
        if state == _AFTER:
            closer = "}" if self._stack[-1] == "{" else "]"
            if char == closer:
                return self._close(out)
            return self._punctuation(char, ",", _KEY if closer == "}" else _VALUE, out)
        if state in (_FIRST_KEY, _FIRST_VALUE) and char == ("}" if state == _FIRST_KEY else "]"):
            return self._close(out)
        if state in (_FIRST_KEY, _KEY):
            if char != '"':
                return self._error()
            self._begin_string(out, is_key=True)
            return True
        return self._value(text, is_final, out)

    def _value(self, text: str, is_final: bool, out: list[str]) -> bool:
        char = text[self.pos]
        if char in "{[":
            self._stack.append(char)
            self._state = _FIRST_KEY if char == "{" else _FIRST_VALUE
            self.pos += 1
            out.append(char)
            return True
        if char == '"':
            self._begin_string(out, is_key=False)
            return True
        match = _SCALAR.match(text, self.pos)
        assert match is not None  # the pattern matches the empty string
        if match.end() == len(text) and not is_final:
            return False  # more digits or letters may come
        token = match.group()
        if token in ("true", "false", "null"):
            out.append(token)
        elif token and _NUMBER.fullmatch(token):
            out.append(json.dumps(json.loads(token)))
        else:
            return self._error()
        self.pos = match.end()
        self._value_done()
        return True

    def _punctuation(self, char: str, expected: str, state: int, out: list[str]) -> bool:
        if char != expected:
            return self._error()
        self.pos += 1
        self._state = state
        out.append(_PUNCTUATION[char])
        return True

    def _close(self, out: list[str]) -> bool:
        opener = self._stack.pop()
        out.append("}" if opener == "{" else "]")
        self.pos += 1
        self._value_done()
        return True

    def _begin_string(self, out: list[str], is_key: bool) -> None:
        self._is_key = is_key
        self._state = _STRING
        self.pos += 1
        out.append('"')

    def _string(self, text: str, is_final: bool, out: list[str]) -> bool:
        pos = self.pos
        plain = _PLAIN.match(text, pos)
        if plain is not None:
            out.append(plain.group())
            pos = self.pos = plain.end()
        if pos == len(text):
            return False
        char = text[pos]
        if char == '"':
            out.append('"')
            self.pos = pos + 1
            if self._is_key:
                self._state = _COLON
            else:
                self._value_done()
            return True
        if char != "\\":  # a control character
            return self._error()
        decoded = self._escape(text, pos, is_final)
        if decoded is None:
            return False
        if decoded == "":
            return self._error()
        out.append(_canonical(decoded))
        return True

    def _escape(self, text: str, pos: int, is_final: bool) -> str | None:
        """The character(s) of the escape at text[pos] ('\\'), advancing pos past it; None while
        it is incomplete, "" when it is not valid."""
        piece = text[pos : pos + 6]
        if len(piece) < 6 and not is_final and _PARTIAL_ESCAPE.fullmatch(piece):
            return None
        kind = piece[1:2]
        if kind in _SIMPLE_ESCAPES:
            self.pos = pos + 2
            return _SIMPLE_ESCAPES[kind]
        if kind != "u" or not _HEX4.fullmatch(piece[2:6]):
            return ""
        code, end = int(piece[2:6], 16), pos + 6
        if 0xD800 <= code <= 0xDBFF:  # a high surrogate: json.loads joins a low one that follows
            follow = text[end : end + 6]
            if len(follow) < 6 and not is_final and _PARTIAL_U_ESCAPE.fullmatch(follow):
                return None
            if follow.startswith("\\u") and _HEX4.fullmatch(follow[2:6]):
                low = int(follow[2:6], 16)
                if 0xDC00 <= low <= 0xDFFF:
                    self.pos = end + 6
                    return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
        self.pos = end
        return chr(code)

    def _value_done(self) -> None:
        if self._stack:
            self._state = _AFTER
        else:
            self.status = DONE

    def _error(self) -> bool:
        self.status = ERROR
        return False


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
