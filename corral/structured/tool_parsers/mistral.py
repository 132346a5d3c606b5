"""Mistral style calls: `[TOOL_CALLS]` and one JSON array of {"name": ..., "arguments": {...}}.

The array is all or nothing: if it is not valid JSON, is empty, or has an element that is not a
call, the marker and what follows it are content. Content may come before and after the array.
"""

from __future__ import annotations

from corral.structured.tool_calls import CallFormat
from corral.structured.tool_parsers.base import (
    NON_WS,
    TOOL_CALL_PARSERS,
    BlockResult,
    CallBlock,
    JsonSpan,
    MarkedCallStream,
    ToolCallParser,
    ToolCallStream,
    load_json,
    parse_call,
)

MARKER = "[TOOL_CALLS]"


class _MistralBlock(CallBlock):
    """`[call, ...]`, JSON whitespace before the array."""

    def __init__(self) -> None:
        self._span: JsonSpan | None = None

    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        if self._span is None:
            first = NON_WS.search(text)
            if first is None:
                return BlockResult(None, 0) if is_final else None
            if text[first.start()] != "[":
                return BlockResult(None, 0)
            self._span = JsonSpan(first.start())
        end = self._span.end(text)
        if end is None:
            return BlockResult(None, 0) if is_final else None
        value = load_json(text[self._span.start : end])
        if not isinstance(value, list) or not value:
            return BlockResult(None, 0)
        calls = [parse_call(element) for element in value]
        if any(call is None for call in calls):
            return BlockResult(None, 0)
        return BlockResult([call for call in calls if call is not None], end)


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
