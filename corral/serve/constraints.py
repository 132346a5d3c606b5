"""Rules on request fields that validate a value and describe themselves in the JSON schema (and
so in /openapi.json) from the same numbers: what the schema documents is what the server enforces.

A Rule goes in a field's `Annotated[...]`; it runs after the field's type is validated and fails
with the error type RULE_ERROR, whose message names the limit and the value received
(`must be in [0.0, 2.0], got 3.0`); corral.serve.errors puts the field's path in front of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any

from pydantic import Discriminator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

RULE_ERROR = "corral_rule"


class Rule:
    """accepts(value) decides; problem(value) says why not; json_schema holds the same rule as
    JSON Schema keywords, added to the schema of the annotated type."""

    __slots__ = ("accepts", "json_schema", "problem")

    def __init__(
        self,
        accepts: Callable[[Any], bool],
        problem: Callable[[Any], str],
        json_schema: dict[str, Any],
    ) -> None:
        self.accepts = accepts
        self.problem = problem
        self.json_schema = json_schema

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.json_schema)
        return json_schema

    def _validate(self, value: Any) -> Any:
        if not self.accepts(value):
            raise PydanticCustomError(RULE_ERROR, "{problem}", {"problem": self.problem(value)})
        return value


def in_range(
    low: float | None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Rule:
    """low <= value <= high (strict where open); None: unbounded on that side."""

    def accepts(value: float) -> bool:
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or (value < high if high_open else value <= high)

    if low is not None and high is not None:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        text = f"must be in {interval}"
    elif low is not None:
        text = f"must be {'>' if low_open else '>='} {low}"
    else:
        text = f"must be {'<' if high_open else '<='} {high}"
    json_schema: dict[str, Any] = {}
    if low is not None:
        json_schema["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        json_schema["exclusiveMaximum" if high_open else "maximum"] = high
    return Rule(accepts, lambda value: f"{text}, got {value}", json_schema)


def max_items(limit: int, noun: str) -> Rule:
    """A list of at most `limit` items (noun: what they are, for the message)."""
    return Rule(
        lambda value: len(value) <= limit,
        lambda value: f"has {len(value)} {noun}; at most {limit}",
        {"maxItems": limit},
    )


def not_empty(problem: str = "must not be empty", *, text: bool = False) -> Rule:
    """At least one item (or, with text, one character)."""

    def accepts(value: Sized) -> bool:
        return len(value) > 0

    keyword = "minLength" if text else "minItems"
    return Rule(accepts, lambda value: f"{problem}, got {value!r}", {keyword: 1})


def max_chars(limit: int) -> Rule:
    """A string of 1 to `limit` characters."""
    return Rule(
        lambda value: 0 < len(value) <= limit,
        lambda value: f"must have 1 to {limit} characters, got {len(value)}",
        {"minLength": 1, "maxLength": limit},
    )


def digit_keys(what: str) -> Rule:
    """An object whose keys are strings of the digits 0-9 (int() alone would also take ' 5',
    '+5', '1_0' and '٥'); what: what the keys stand for."""

    def bad_key(value: dict[str, Any]) -> str | None:
        return next((key for key in value if not (key.isascii() and key.isdigit())), None)

    return Rule(
        lambda value: bad_key(value) is None,
        lambda value: f"keys must be {what}, got {bad_key(value)!r}",
        {"propertyNames": {"pattern": "^[0-9]+$"}},
    )


def by_json_type(tag: Callable[[Any], str | None], error_type: str, expected: str) -> Discriminator:
    """Picks one member of a union by the JSON type of the value (tag returns the member's Tag,
    None when no member fits), so that errors come from that member alone, not from all."""
    return Discriminator(tag, custom_error_type=error_type, custom_error_message=expected)
