"""Mistral style calls: `[TOOL_CALLS]` and one JSON array of {"name": ..., "arguments": {...}}.

Each element is read on its own and streams as a call as soon as it can (base.py). An element
that is not a call ends the block: the text from the end of the last call on is content, and
with no call at all (an empty array, a first element that is not a call, no array) the marker
and what follows it are content. Content may come before and after the array.
"""

from __future__ import annotations

from corral.structured.tool_calls import CallFormat
from corral.structured.tool_parsers.base import (
    NON_WS,
    NOT_A_BLOCK,
    TOOL_CALL_PARSERS,
    BlockResult,
    CallBlock,
    MarkedCallStream,
    ToolCallParser,
    ToolCallStream,
    read_call,
)
from corral.structured.tool_parsers.call_reader import CallReader

MARKER = "[TOOL_CALLS]"


class _MistralBlock(CallBlock):
    """`[call, ...]`, JSON whitespace before the array and around its elements."""

    opener = "["

    def __init__(self, sink: ToolCallStream) -> None:
        super().__init__(sink)
        self._pos = -1  # where the next element, `,` or `]` is due (-1: before the `[`)
        self._after_element = False  # an element was read: `,` or `]` is due
        self._reader: CallReader | None = None
        self._num_calls = 0
        self._calls_end = 0  # where the last call's text ends

    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        if self._pos < 0:
            start = self._opening(text, is_final)
            if not isinstance(start, int):
                return start
            self._pos = start + 1
        while True:
            if self._reader is None:
                first = NON_WS.search(text, self._pos)
                if first is None:
                    return self._stop() if is_final else None
                char, at = text[first.start()], first.start()
                if self._after_element and char in ",]":
                    if char == "]":
                        return BlockResult([], at + 1)  # (an element was a call: see _stop)
                    self._pos, self._after_element = at + 1, False
                    continue
                if self._after_element or char != "{":
                    return self._stop()
                self._reader = CallReader(at, self.sink)
            call_end = read_call(self._reader, text, is_final)
            if call_end is None:
                return None
            self._reader = None
            if not call_end.is_streamed:
                if call_end.call is None:
                    return self._stop()
                self.sink.emit_call(call_end.call)
            self._num_calls += 1
            self._pos = self._calls_end = call_end.end
            self._after_element = True

    def _stop(self) -> BlockResult:
        """The block ends with its last call; no call: it is not a block."""
        return BlockResult([], self._calls_end) if self._num_calls else NOT_A_BLOCK


@TOOL_CALL_PARSERS.register("mistral")
class MistralToolCallParser(ToolCallParser):
    """Mistral 7B v0.3 / Mistral Nemo / Mistral Small style tool calls."""

    call_format = CallFormat(
        prefix=MARKER,
        suffix="",
        separator=", ",
        array=True,
        arguments_key="arguments",
        per_call_wrap=False,
    )

    def stream(self) -> ToolCallStream:
        """A fresh incremental parser for one output."""
        return MarkedCallStream(MARKER, _MistralBlock)
