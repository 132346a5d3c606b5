"""The constraints of benchmarks/structured_output.py: the decode workloads (a JSON schema of
moderate size and a regex, both bounded so that a weak model's output ends) and the schema set
whose compile times are measured."""

from __future__ import annotations

from typing import Any

from corral.structured.params import StructuredOutputParams

_STRING = {"type": "string", "maxLength": 16}
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "operation": {"enum": ["sum", "difference", "product", "ratio"]},
        "num_steps": {"type": "integer", "minimum": 1, "maximum": 9},
        "result": {
            "type": "object",
            "properties": {
                "value": {"type": "integer", "minimum": -1000, "maximum": 100000},
                "unit": {"type": "string", "maxLength": 12},
            },
            "required": ["value", "unit"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["title", "operation", "num_steps", "result", "tags"],
}
REGEX = r"The answer is [0-9]{1,6}\. Unit: (dollars|hours|miles|apples)\. [A-Za-z0-9 ,]{100,200}\."
COMPILE_SCHEMAS: dict[str, dict[str, Any]] = {
    "record (decode workload)": RECORD_SCHEMA,
    "nested objects, 3 levels": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": _STRING,
                    "address": {
                        "type": "object",
                        "properties": {"street": _STRING, "city": _STRING, "zip": _STRING},
                        "required": ["street", "city", "zip"],
                    },
                },
                "required": ["name", "address"],
            }
        },
        "required": ["person"],
    },
    "array of objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "label": _STRING},
            "required": ["id", "label"],
        },
        "minItems": 1,
        "maxItems": 8,
    },
    "enums and const": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue", "cyan", "magenta", "yellow"]},
            "size": {"enum": [1, 2, 3, "large", None]},
            "version": {"const": "v1"},
        },
        "required": ["color", "size", "version"],
    },
    "bounded numbers": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 999},
            "offset": {"type": "integer", "minimum": -50, "maximum": 50},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["count", "offset", "ratio"],
    },
    "optional fields": {
        "type": "object",
        "properties": {name: _STRING for name in ("a", "b", "c", "d", "e", "f")},
        "required": ["a"],
    },
    "anyOf": {
        "type": "object",
        "properties": {
            "value": {
                "anyOf": [
                    {"type": "integer"},
                    {"type": "string", "maxLength": 8},
                    {"type": "array", "items": {"type": "boolean"}, "maxItems": 4},
                    {"type": "null"},
                ]
            }
        },
        "required": ["value"],
    },
    "$ref recursion (tree)": {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": _STRING,
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name", "children"],
            }
        },
    },
}
# Mask cost only, replayed on the regex workload's outputs: the cost of the {100,200} bound.
REGEX_UNBOUNDED_LABEL = "regex with + for {100,200}"
REGEX_UNBOUNDED = StructuredOutputParams(regex=REGEX.replace("{100,200}", "+"))
WORKLOADS = {
    "json": StructuredOutputParams(json=RECORD_SCHEMA),
    "regex": StructuredOutputParams(regex=REGEX),
}


def compile_constraints() -> dict[str, StructuredOutputParams]:
    """The compile-time set: every schema above, any JSON object, and the regex workload."""
    constraints = {
        name: StructuredOutputParams(json=schema) for name, schema in COMPILE_SCHEMAS.items()
    }
    constraints["any JSON object"] = StructuredOutputParams(json_object=True)
    constraints["regex (decode workload)"] = WORKLOADS["regex"]
    return constraints
