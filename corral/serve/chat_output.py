"""A chat choice's text -> reasoning_content, content and tool_calls, whole or streamed.

The reasoning parser (--reasoning-parser) splits off the thinking block first; the tool-call
parser (--tool-call-parser, when the request has tools) then finds calls in the content. The
streamed deltas concatenate to the whole-text result (each parser guarantees it for itself).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from corral.serve.responses import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCallOut,
)
from corral.structured.tool_calls import StreamDelta


class ParsedChoice(NamedTuple):
    reasoning_content: str | None
    content: str | None
    tool_calls: list[ToolCallOut]


def parse_choice(text: str, reasoning_parser: Any, tool_parser: Any) -> ParsedChoice:
    """A finished choice's text, split (parsers None: off)."""
    reasoning, content = None, text
    if reasoning_parser is not None:
        reasoning, content = reasoning_parser.extract(text)
    calls: list[ToolCallOut] = []
    if tool_parser is not None and content:
        extracted = tool_parser.extract(content)
        content = extracted.content
        calls = [
            ToolCallOut(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))
            for call in extracted.tool_calls
        ]
    return ParsedChoice(reasoning, content, calls)


def finish_reason(reason: str | None, has_tool_calls: bool) -> str | None:
    """OpenAI's "tool_calls" when a choice that stopped by itself called tools."""
    return "tool_calls" if reason == "stop" and has_tool_calls else reason


class ChoiceStream:
    """One streamed choice: feed() each new piece of text, finish() at the end; each returns
    the DeltaMessages to send (possibly none: a parser holds back a possible marker)."""

    def __init__(self, reasoning_parser: Any, tool_parser: Any) -> None:
        self._reasoning = reasoning_parser.stream() if reasoning_parser is not None else None
        self._tools = tool_parser.stream() if tool_parser is not None else None
        self.num_tool_calls = 0

    @property
    def is_plain(self) -> bool:
        """No parser: text goes out as it comes."""
        return self._reasoning is None and self._tools is None

    def feed(self, text: str) -> list[DeltaMessage]:
        if self._reasoning is None:
            return self._content([StreamDelta(content=text)] if text else [])
        return self._content(self._reasoning.feed(text))

    def finish(self) -> list[DeltaMessage]:
        messages = []
        if self._reasoning is not None:
            messages = self._content(self._reasoning.finish())
        if self._tools is not None:
            messages += self._deltas(self._tools.finish())
        return messages

    def _content(self, deltas: list[StreamDelta]) -> list[DeltaMessage]:
        """Reasoning deltas go out; content goes through the tool-call parser, if any."""
        messages = []
        for delta in deltas:
            if delta.reasoning_content:
                messages.append(DeltaMessage(reasoning_content=delta.reasoning_content))
            if delta.content:
                if self._tools is None:
                    messages.append(DeltaMessage(content=delta.content))
                else:
                    messages += self._deltas(self._tools.feed(delta.content))
        return messages

    def _deltas(self, deltas: list[StreamDelta]) -> list[DeltaMessage]:
        messages = []
        for delta in deltas:
            if delta.content:
                messages.append(DeltaMessage(content=delta.content))
            if delta.tool_calls:
                calls = []
                for call in delta.tool_calls:
                    self.num_tool_calls = max(self.num_tool_calls, call.index + 1)
                    calls.append(
                        DeltaToolCall(
                            index=call.index,
                            id=call.id,
                            type="function" if call.id is not None else None,
                            function=DeltaFunctionCall(name=call.name, arguments=call.arguments),
                        )
                    )
                messages.append(DeltaMessage(tool_calls=calls))
        return messages


def merge_deltas(deltas: list[DeltaMessage]) -> DeltaMessage | None:
    """One step's deltas of a choice as one (a chunk holds each choice once): texts joined,
    pieces of one tool call joined."""
    if not deltas:
        return None
    if len(deltas) == 1:
        return deltas[0]
    content = "".join(d.content or "" for d in deltas) or None
    reasoning = "".join(d.reasoning_content or "" for d in deltas) or None
    calls: dict[int, DeltaToolCall] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            known = calls.get(call.index)
            if known is None:
                calls[call.index] = call.model_copy(deep=True)
                continue
            known.id = known.id or call.id
            known.type = known.type or call.type
            known.function.name = known.function.name or call.function.name
            pieces = (known.function.arguments or "") + (call.function.arguments or "")
            known.function.arguments = pieces
    return DeltaMessage(
        content=content, reasoning_content=reasoning, tool_calls=list(calls.values()) or None
    )
