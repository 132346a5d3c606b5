"""`<think>...</think>` reasoning, with the opening tag in the output or already in the prompt."""

from __future__ import annotations

from corral.structured.reasoning_parsers.base import REASONING_PARSERS, ReasoningParser


@REASONING_PARSERS.register("think")
class ThinkReasoningParser(ReasoningParser):
    """The output may open with `<think>` (after whitespace); reasoning then runs to `</think>`, or
    to the end of the output when the tag never closes. An output that does not open with
    `<think>` is all content (Qwen3, QwQ with the tag in the output)."""

    start_text = "<think>"
    end_text = "</think>"
    starts_in_reasoning = False


@REASONING_PARSERS.register("deepseek_r1")
class DeepSeekR1ReasoningParser(ReasoningParser):
    """The prompt ends with `<think>`, so the output starts inside the reasoning, which runs to
    `</think>`, or to the end of the output when the tag never comes. A `<think>` that the model
    writes anyway at the start is dropped."""

    start_text = "<think>"
    end_text = "</think>"
    starts_in_reasoning = True
