"""Tool calls as the OpenAI-compatible server returns them, whole and streamed (torch-free).

A tool-call parser (tool_parsers/) turns a model's raw output into `ExtractedToolCalls`, or, fed the
output piece by piece, into `StreamDelta`s; a reasoning parser (reasoning_parsers/) splits it into
reasoning and content with the same `StreamDelta`. `CallFormat` says how a model family writes its
calls, so that a grammar can force one.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One finished call. arguments: the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ExtractedToolCalls:
    """A finished output split into content (None when there is none) and calls, in order."""

    content: str | None
    tool_calls: list[ToolCall]


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of call number `index` (0-based, in output order), in OpenAI's streaming shape.

    The first delta of a call carries its id and name (and arguments ""); later ones carry only
    pieces of the arguments' JSON text, which concatenate to the whole.
    """

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """What one step of a streaming parser adds: content text, reasoning text, call pieces."""

    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CallFormat:
    """How a model family writes its calls, for building a grammar that forces one or more.

    A call is a JSON object {"name": <string>, arguments_key: <object>}.
    per_call_wrap: prefix and suffix wrap each call, and separator goes between the wrapped calls
    (Hermes: `<tool_call>\\n{...}\\n</tool_call>\\n<tool_call>...`). Otherwise prefix and suffix
    wrap the whole list once. array: the calls are the elements of one JSON array (`[...]`, with
    separator between elements) inside prefix and suffix (Mistral: `[TOOL_CALLS][{...}, {...}]`).
    """

    prefix: str
    suffix: str
    separator: str
    array: bool
    arguments_key: str
    per_call_wrap: bool


def new_call_id() -> str:
    """A fresh call id: "call_" and 24 hex digits (random, from uuid4)."""
    return "call_" + uuid.uuid4().hex[:24]


def partial_marker_len(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper, non-empty start of `marker`.

    A streaming parser holds back that many characters: with more text they may become the marker.
    """
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class BufferedStream(ABC):
    """An incremental parser of one output: feed() each new piece of text, then finish() once.
    Text waits in _buf until _advance() can decide it; deltas collect in _out."""

    def __init__(self) -> None:
        self._buf = ""  # not yet consumed
        self._out: list[StreamDelta] = []

    def feed(self, delta_text: str) -> list[StreamDelta]:
        """The deltas that `delta_text` (the next piece of the output) makes certain."""
        self._buf += delta_text
        self._advance(is_final=False)
        return self._take()

    def finish(self) -> list[StreamDelta]:
        """The deltas left at the end of the output, held-back text included."""
        self._advance(is_final=True)
        self._at_end()
        return self._take()

    @abstractmethod
    def _advance(self, is_final: bool) -> None:
        """Consume what the buffer decides (all of it when is_final)."""

    def _at_end(self) -> None:
        """Flush what only the end of the output decides."""

    def _take(self) -> list[StreamDelta]:
        out, self._out = self._out, []
        return out
