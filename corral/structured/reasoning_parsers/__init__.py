"""Reasoning parsers, chosen by name from REASONING_PARSERS.

parser = REASONING_PARSERS.get("deepseek_r1")()
reasoning_content, content = parser.extract(text)  # a finished output
stream = parser.stream()  # a streamed one: stream.feed(piece) ..., then stream.finish()
"""

from __future__ import annotations

from corral.structured.reasoning_parsers import think
from corral.structured.reasoning_parsers.base import (
    REASONING_PARSERS,
    ExtractedReasoning,
    ReasoningParser,
    ReasoningStream,
)

__all__ = [
    "REASONING_PARSERS",
    "ExtractedReasoning",
    "ReasoningParser",
    "ReasoningStream",
    "think",
]
