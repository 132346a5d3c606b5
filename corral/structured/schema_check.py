"""Refuse JSON Schema keywords that the grammar backend would ignore: a schema the output is
not held to must not pass as if it were (a 400 naming the keyword instead of a 200 whose output
ignores it)."""

from __future__ import annotations

from typing import Any

# Keywords xgrammar 0.2.9 does not enforce (checked: it compiles them and ignores them).
UNSUPPORTED_KEYWORDS = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "unevaluatedProperties",
        "unevaluatedItems",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
    }
)
JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
COUNT_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("additionalProperties", "items", "contains", "propertyNames")


def unsupported_schema_problem(schema: Any, path: str = "") -> str | None:
    """Why the schema cannot be enforced (naming the keyword and where), or None."""
    if isinstance(schema, bool) or not isinstance(schema, dict):
        return None
    for keyword in schema:
        if keyword in UNSUPPORTED_KEYWORDS:
            return f"keyword {keyword!r} at {path or '/'} is not supported"
    ref = schema.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        return f"$ref {ref!r} at {path or '/'}: only local references (#...) are supported"
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind is not None and kind not in JSON_TYPES:
            return f"type {kind!r} at {path or '/'} is not a JSON Schema type"
    for keyword in COUNT_KEYWORDS:
        value = schema.get(keyword)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            return f"{keyword} at {path or '/'} must be >= 0, got {value}"
    for keyword in _SCHEMA_MAPS:
        children = schema.get(keyword)
        if isinstance(children, dict):
            for name, child in children.items():
                if problem := unsupported_schema_problem(child, f"{path}/{keyword}/{name}"):
                    return problem
    for keyword in _SCHEMA_LISTS + _SCHEMA_VALUES:
        children = schema.get(keyword)
        items = children if isinstance(children, list) else [children]
        for index, child in enumerate(items):
            where = f"{path}/{keyword}" + (f"/{index}" if isinstance(children, list) else "")
            if problem := unsupported_schema_problem(child, where):
                return problem
    return None
