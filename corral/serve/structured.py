"""Request fields -> StructuredOutputParams and ReasoningParams, with 400s that name the field.

Precedence: a forced tool call (tool_choice "required" or a named function) is the constraint;
otherwise response_format, otherwise one guided_* extra; two at once are refused.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from corral.serve.errors import bad_request
from corral.serve.structured_protocol import ChatTool, GuidedFields, NamedToolChoice
from corral.structured.params import ReasoningParams, StructuredOutputParams
from corral.structured.tool_calls import CallFormat


def guided_constraint(req: GuidedFields) -> tuple[StructuredOutputParams | None, str | None]:
    """The constraint of the guided_* extras, and the field that gave it."""
    given = {
        name: getattr(req, name)
        for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")
        if getattr(req, name) is not None
    }
    if len(given) > 1:
        raise bad_request(
            f"at most one of guided_json, guided_regex, guided_choice, guided_grammar may be "
            f"set, got {', '.join(given)}",
            next(iter(given)),
        )
    if not given:
        return None, None
    name, value = next(iter(given.items()))
    whitespace = req.guided_whitespace
    if name == "guided_json":
        return StructuredOutputParams(json=_schema_text(value, name), whitespace=whitespace), name
    if name == "guided_regex":
        return StructuredOutputParams(regex=value), name
    if name == "guided_choice":
        return StructuredOutputParams(choice=tuple(value)), name
    syntax = req.guided_grammar_syntax
    return StructuredOutputParams(grammar=value, grammar_syntax=syntax), name


def _schema_text(schema: dict[str, Any] | str, field: str) -> str:
    """A schema as JSON text: the engine process gets a string, which pickles at any nesting
    depth (a deeply nested dict does not, and a message that fails to pickle is dropped by the
    queue's feeder thread, leaving its request waiting forever)."""
    if isinstance(schema, str):
        return schema
    try:
        return json.dumps(schema)
    except RecursionError:
        raise bad_request(f"{field}: the schema is nested too deeply", field) from None


def response_format_constraint(
    response_format: Any, whitespace: str
) -> tuple[StructuredOutputParams | None, str | None]:
    """The constraint of an OpenAI response_format (None for type text)."""
    if response_format is None or response_format.type == "text":
        return None, None
    kind = response_format.type
    if kind == "json_object":
        return StructuredOutputParams(json_object=True, whitespace=whitespace), "response_format"
    if kind == "json_schema":
        spec = response_format.json_schema
        if spec is None or spec.schema_ is None:
            raise bad_request(
                "response_format type 'json_schema' needs json_schema.schema",
                "response_format.json_schema",
            )
        field = "response_format.json_schema.schema"
        schema = _schema_text(spec.schema_, field)
        return StructuredOutputParams(json=schema, whitespace=whitespace), field
    if response_format.format is None:
        raise bad_request(
            "response_format type 'structural_tag' needs format", "response_format.format"
        )
    tag = {"type": "structural_tag", "format": response_format.format}
    return StructuredOutputParams(structural_tag=json.dumps(tag)), "response_format.format"


def tool_call_constraint(
    tools: list[ChatTool], choice: Any, call_format: CallFormat, parallel: bool
) -> StructuredOutputParams:
    """An xgrammar structural tag that forces tool calls in the parser's format: one of the
    tools (or the named one), at least one call, more only if parallel."""
    if isinstance(choice, NamedToolChoice):
        tools = [tool for tool in tools if tool.function.name == choice.function.name]
    tags = [_call_tag(tool, call_format) for tool in tools]
    calls: dict[str, Any] = {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": call_format.separator,
        "at_least_one": True,
        "stop_after_first": not parallel,
    }
    if call_format.per_call_wrap:
        body = calls
    else:
        parts: list[dict[str, Any]] = []
        opening = call_format.prefix + ("[" if call_format.array else "")
        closing = ("]" if call_format.array else "") + call_format.suffix
        if opening:
            parts.append({"type": "const_string", "value": opening})
        parts.append(calls)
        if closing:
            parts.append({"type": "const_string", "value": closing})
        body = {"type": "sequence", "elements": parts} if len(parts) > 1 else calls
    return StructuredOutputParams(
        structural_tag=json.dumps({"type": "structural_tag", "format": body})
    )


def _call_tag(tool: ChatTool, call_format: CallFormat) -> dict[str, Any]:
    name = json.dumps(tool.function.name)
    begin = f'{{"name": {name}, "{call_format.arguments_key}": '
    end = "}"
    if call_format.per_call_wrap:
        begin, end = call_format.prefix + begin, end + call_format.suffix
    parameters = tool.function.parameters or {"type": "object", "properties": {}}
    return {
        "type": "tag",
        "begin": begin,
        "content": {"type": "json_schema", "json_schema": parameters},
        "end": end,
    }


def check_tool_choice(tools: list[ChatTool] | None, choice: Any) -> None:
    """tool_choice must name a given tool; required needs tools."""
    names = [tool.function.name for tool in tools or []]
    if len(set(names)) != len(names):
        raise bad_request(f"tools: function names must be unique, got {names}", "tools")
    if choice == "required" and not names:
        raise bad_request("tool_choice 'required' needs at least one tool in tools", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise bad_request(
            f"tool_choice names function {choice.function.name!r}, which is not among the "
            f"tools ({', '.join(names) or 'none'})",
            "tool_choice.function.name",
        )


def reasoning_params(
    parser: Any, encode: Any, max_reasoning_tokens: int | None, constrained: bool
) -> ReasoningParams | None:
    """ReasoningParams when the engine must know the block: a thinking budget, or a constraint
    that must wait for the block's end. parser: the server's reasoning parser (None: off)."""
    if parser is None:
        if max_reasoning_tokens is not None:
            raise bad_request(
                "max_reasoning_tokens needs a reasoning model: start the server with "
                "--reasoning-parser",
                "max_reasoning_tokens",
            )
        return None
    if max_reasoning_tokens is None and not constrained:
        return None
    return ReasoningParams(
        end_token_ids=tuple(encode(parser.end_text)),
        start_token_ids=tuple(encode(parser.start_text)),
        starts_in_reasoning=parser.starts_in_reasoning,
        max_reasoning_tokens=max_reasoning_tokens,
    )


class OutputSetup(NamedTuple):
    """What a request asks of its output's shape, resolved."""

    constraint: StructuredOutputParams | None
    forced_tools: bool  # the constraint forces tool calls (required or a named function)
    tools_active: bool  # outputs are parsed for tool calls


def output_setup(req: Any, call_format: CallFormat | None) -> OutputSetup:
    """The constraint of a completions or chat request: forced tool calls, response_format or
    one guided_* extra (two at once: 400)."""
    formatted, format_field = response_format_constraint(
        getattr(req, "response_format", None), req.guided_whitespace
    )
    guided, guided_field = guided_constraint(req)
    if formatted is not None and guided is not None:
        raise bad_request(
            f"response_format and {guided_field} cannot both be set", guided_field or "guided"
        )
    constraint = formatted or guided
    source = format_field or guided_field
    tools = getattr(req, "tools", None) or []
    choice = getattr(req, "tool_choice", None)
    if tools and choice is None:
        choice = "auto"
    check_tool_choice(tools, choice)
    tools_active = bool(tools) and choice != "none"
    if tools_active and call_format is None:
        raise bad_request(
            "tools need a tool-call parser: the server runs with --tool-call-parser none", "tools"
        )
    forced = tools_active and (choice == "required" or isinstance(choice, NamedToolChoice))
    if forced:
        if constraint is not None:
            raise bad_request(
                f"tool_choice {choice if isinstance(choice, str) else 'naming a function'} "
                f"forces a tool call and cannot be combined with {source}",
                "tool_choice",
            )
        assert call_format is not None
        parallel = getattr(req, "parallel_tool_calls", None) is not False
        constraint = tool_call_constraint(tools, choice, call_format, parallel)
        source = "tools"
    if constraint is not None:
        constraint = dataclasses.replace(constraint, source=source)
    return OutputSetup(constraint, forced, tools_active)


def tool_schema_checks(req: Any) -> list[StructuredOutputParams]:
    """Each tool's parameter schema as a constraint to check (a bad one gets 400 naming it)."""
    return [
        StructuredOutputParams(
            json=tool.function.parameters, source=f"tools[{index}].function.parameters"
        )
        for index, tool in enumerate(getattr(req, "tools", None) or [])
        if tool.function.parameters is not None
    ]
