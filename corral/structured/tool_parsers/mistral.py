"""Mistral style calls: `[TOOL_CALLS]` and one JSON array of {"name": ..., "arguments": {...}}.

The array is all or nothing: if it is not valid JSON, is empty, or has an element that is not a
call, the marker and what follows it are content. Content may come before and after the array.
"""

from __future__ import annotations

from corral.structured.tool_calls import CallFormat
from corral.structured.tool_parsers.base import (
    NOT_A_BLOCK,
    TOOL_CALL_PARSERS,
    BlockResult,
    CallBlock,
    MarkedCallStream,
    ToolCallParser,
    ToolCallStream,
    load_json,
    parse_call,
)

MARKER = "[TOOL_CALLS]"


class _MistralBlock(CallBlock):
    """`[call, ...]`, JSON whitespace before the array."""

    opener = "["

    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        end = self._json_end(text, is_final)
        if not isinstance(end, int):
            return end
        value = load_json(self._json_text(text, end))
        if not isinstance(value, list) or not value:
            return NOT_A_BLOCK
        calls = [parse_call(element) for element in value]
        if any(call is None for call in calls):
            return NOT_A_BLOCK
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
