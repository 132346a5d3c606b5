"""Hermes and Qwen style calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

Each call has its own pair of tags, with JSON whitespace allowed around the object; a last call may
lack its closing tag when the output ends right after its object. Content may come before, between
and after calls.
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
    ParsedCall,
    ToolCallParser,
    ToolCallStream,
    load_json,
    parse_call,
)

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class _HermesBlock(CallBlock):
    """`{call}` then `</tool_call>`, JSON whitespace around the object."""

    opener = "{"

    def __init__(self) -> None:
        super().__init__()
        self._call: ParsedCall | None = None

    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        end = self._json_end(text, is_final)
        if not isinstance(end, int):
            return end
        if self._call is None:
            self._call = parse_call(load_json(self._json_text(text, end)))
            if self._call is None:
                return NOT_A_BLOCK
        after = NON_WS.search(text, end)
        if after is None:  # only whitespace after the object: the end of the output ends the call
            return BlockResult([self._call], len(text)) if is_final else None
        tag_start = after.start()
        if text.startswith(CLOSE_TAG, tag_start):
            return BlockResult([self._call], tag_start + len(CLOSE_TAG))
        rest = text[tag_start:]
        if len(rest) < len(CLOSE_TAG) and CLOSE_TAG.startswith(rest) and not is_final:
            return None
        return NOT_A_BLOCK


@TOOL_CALL_PARSERS.register("hermes")
class HermesToolCallParser(ToolCallParser):
    """Hermes 2 Pro / Qwen 2.5 / Qwen 3 tool calls."""

    call_format = CallFormat(
        prefix=OPEN_TAG + "\n",
        suffix="\n" + CLOSE_TAG,
        separator="\n",
        array=False,
        arguments_key="arguments",
        per_call_wrap=True,
    )

    def stream(self) -> ToolCallStream:
        """A fresh incremental parser for one output."""
        return MarkedCallStream(OPEN_TAG, _HermesBlock)
