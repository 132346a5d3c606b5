"""The schema set and regexes that constrained outputs are checked against, offline and through
the server: nested objects, enums, bounded numbers, optional fields, anyOf, $defs references.
Strings and numbers are bounded: a random tiny model would otherwise write them until max_tokens.
"""

from __future__ import annotations

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1, "maximum": 999},
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 6},
                        "maxItems": 3,
                    },
                },
                "required": ["id", "tags"],
            }
        },
        "required": ["user"],
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"enum": [1, 2, 3, None]},
            "ok": {"type": "boolean"},
        },
        "required": ["color", "size", "ok"],
    },
    "bounded-numbers": {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": -5, "maximum": 40},
            "k": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "x": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["n", "k", "x"],
    },
    "optional-fields": {
        "type": "object",
        "properties": {
            "a": {"type": "boolean"},
            "b": {"type": "string", "maxLength": 4},
            "c": {"type": "null"},
        },
        "required": ["a"],
    },
    "any-of": {
        "anyOf": [
            {
                "type": "object",
                "properties": {"kind": {"const": "x"}, "v": {"type": "boolean"}},
                "required": ["kind", "v"],
            },
            {"type": "array", "items": {"enum": [0, 1]}, "minItems": 1, "maxItems": 4},
        ]
    },
    "defs": {
        "type": "object",
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["x"],
            }
        },
        "properties": {
            "points": {
                "type": "array",
                "items": {"$ref": "#/$defs/point"},
                "minItems": 1,
                "maxItems": 2,
            }
        },
        "required": ["points"],
    },
}
REGEXES = [r"[0-9]{3}-[a-z]{2,4}", r"(yes|no|maybe)!", r"[A-Z][a-z]{0,5} [0-9]{1,2}"]
