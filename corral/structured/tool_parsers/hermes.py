"""Hermes and Qwen style calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

Each call has its own pair of tags, with JSON whitespace allowed around the object; a last call may
lack its closing tag when the output ends right after its object. Content may come before, between
and after calls. A call that streamed (base.py) stands even without its closing tag: what follows
its object (or the point where its JSON broke off) is then content.
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

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


class _HermesBlock(CallBlock):
    """`{call}` then `</tool_call>`, JSON whitespace around the object."""

    opener = "{"

    def __init__(self, sink: ToolCallStream) -> None:
        super().__init__(sink)
        self._reader: CallReader | None = None

    def advance(self, text: str, is_final: bool) -> BlockResult | None:
        if self._reader is None:
            start = self._opening(text, is_final)
            if not isinstance(start, int):
                return start
            self._reader = CallReader(start, self.sink)
        call_end = read_call(self._reader, text, is_final)
        if call_end is None:
            return None
        end = call_end.end
        if not call_end.is_streamed:
            if call_end.call is None:
                return NOT_A_BLOCK
            closed = _close_tag_end(text, end, is_final)
            if closed is None or closed < 0:
                return None if closed is None else NOT_A_BLOCK
            return BlockResult([call_end.call], closed)
        # A streamed call stands; without its closing tag, what follows it is content.
        closed = _close_tag_end(text, end, is_final)
        if closed is None:
            return None
        return BlockResult([], closed if closed >= 0 else end)


def _close_tag_end(text: str, end: int, is_final: bool) -> int | None:
    """After a call object ending at `end`: where its closing tag ends (JSON whitespace first;
    the end of the output, or there a start of the tag, closes it too); -1 when something else
    follows; None while undecided."""
    after = NON_WS.search(text, end)
    if after is None:
        return len(text) if is_final else None
    tag_start = after.start()
    if text.startswith(CLOSE_TAG, tag_start):
        return tag_start + len(CLOSE_TAG)
    rest = text[tag_start:]
    if len(rest) < len(CLOSE_TAG) and CLOSE_TAG.startswith(rest):
        return None if not is_final else -1
    return -1


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
