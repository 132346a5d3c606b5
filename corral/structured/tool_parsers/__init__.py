"""Tool-call parsers, one per model family, chosen by name from TOOL_CALL_PARSERS.

parser = TOOL_CALL_PARSERS.get("hermes")()
parser.extract(text)  # a finished output
stream = parser.stream()  # a streamed one: stream.feed(piece) ..., then stream.finish()
"""

from __future__ import annotations

from corral.structured.tool_parsers import hermes, llama3_json, mistral
from corral.structured.tool_parsers.base import (
    TOOL_CALL_PARSERS,
    ToolCallParser,
    ToolCallStream,
)

__all__ = [
    "TOOL_CALL_PARSERS",
    "ToolCallParser",
    "ToolCallStream",
    "hermes",
    "llama3_json",
    "mistral",
]
