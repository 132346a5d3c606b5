"""Request fields for structured output, tools and reasoning (pydantic): OpenAI's
response_format, tools and tool_choice, and the common extras (guided_json, guided_regex,
guided_choice, guided_grammar, max_reasoning_tokens)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.serve.constraints import in_range, max_items, not_empty

MAX_TOOLS = 128
MAX_CHOICES = 1024
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class JsonSchemaSpec(_Strict):
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, strict=True, populate_by_name=True
    )

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="a JSON Schema; the output validates against it"
    )
    strict: bool | None = Field(None, description="schemas are always enforced strictly")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaSpec | None = Field(None, description="with type json_schema")
    format: dict[str, Any] | None = Field(
        None, description="with type structural_tag: an xgrammar structural tag format"
    )


class FunctionSpec(_Strict):
    name: Annotated[str, Field(pattern=FUNCTION_NAME_PATTERN)]
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="a JSON Schema of the arguments object (checked per request)"
    )
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
Tools = Annotated[list[ChatTool], max_items(MAX_TOOLS, "tools")]
GuidedChoice = Annotated[
    list[Annotated[str, not_empty("is empty; choices must not be empty", text=True)]],
    not_empty(),
    max_items(MAX_CHOICES, "choices"),
]


class GuidedFields(BaseModel):
    """The extras on completions and chat (at most one of them, and not with a
    response_format other than text)."""

    guided_json: dict[str, Any] | str | None = Field(
        None, description="a JSON Schema (object or its JSON text) the output must satisfy"
    )
    guided_regex: str | None = Field(None, description="a regex the whole output must match")
    guided_choice: GuidedChoice | None = Field(None, description="the output is one of these")
    guided_grammar: str | None = Field(
        None, description="an EBNF grammar (xgrammar's GBNF-style dialect), or Lark"
    )
    guided_grammar_syntax: Literal["ebnf", "lark"] = "ebnf"
    guided_whitespace: Literal["compact", "any"] = Field(
        "compact", description="JSON whitespace: compact (one space after : and ,) or any"
    )


MaxReasoningTokens = Annotated[int, in_range(0)]
