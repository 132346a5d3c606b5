"""Bad structured-output, tool and reasoning fields get a 400 whose error names the field
("param") and the problem, streamed or not, and the server keeps serving (the package's shared
server: default --tool-call-parser hermes, no --reasoning-parser)."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import auth

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi"}]
OBJECT = {"type": "object", "properties": {"a": {"type": "integer"}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": OBJECT}}
BAD_PARAMETERS = {"type": "function", "function": {"name": "bad", "parameters": {"type": "nope"}}}


def _schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (id, path, fields added to a valid body, the error's param, substrings of its message)
CASES = [
    ("schema-type", CHAT, {"guided_json": {"type": "nope"}}, "guided_json", ["nope"]),
    (
        "response-format-schema-type",
        CHAT,
        {"response_format": _schema_format({"type": "nope"})},
        "response_format.json_schema.schema",
        ["nope"],
    ),
    ("schema-text-not-object", CHAT, {"guided_json": "[1, 2]"}, "guided_json", ["object"]),
    ("schema-text-not-json", CHAT, {"guided_json": "{nope"}, "guided_json", ["JSON"]),
    ("schema-a-list", CHAT, {"guided_json": [1, 2]}, "guided_json", ["dictionary"]),
    (
        "response-format-schema-a-list",
        CHAT,
        {"response_format": _schema_format([{"type": "object"}])},
        "response_format.json_schema.schema",
        ["dictionary"],
    ),
    ("schema-bad-ref", CHAT, {"guided_json": {"$ref": "#/nope"}}, "guided_json", ["nope"]),
    ("regex", CHAT, {"guided_regex": "(unclosed"}, "guided_regex", ["not closed"]),
    ("regex-completions", COMPLETIONS, {"guided_regex": "[z-a]"}, "guided_regex", ["bound"]),
    ("ebnf-empty-rule", CHAT, {"guided_grammar": "root ::= "}, "guided_grammar", ["EBNF"]),
    ("ebnf-no-root", CHAT, {"guided_grammar": 'a ::= "a"'}, "guided_grammar", ["root"]),
    (
        "lark-unknown-rule",
        CHAT,
        {"guided_grammar": 'start: "a" b', "guided_grammar_syntax": "lark"},
        "guided_grammar",
        ["b"],
    ),
    (
        "two-guided",
        CHAT,
        {"guided_regex": "a", "guided_choice": ["a"]},
        "guided_regex",
        ["at most one", "guided_regex", "guided_choice"],
    ),
    (
        "guided-and-response-format",
        COMPLETIONS,
        {"guided_regex": "a", "response_format": {"type": "json_object"}},
        "guided_regex",
        ["response_format", "guided_regex"],
    ),
    (
        "json-schema-without-schema",
        CHAT,
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format.json_schema",
        ["json_schema.schema"],
    ),
    (
        "json-schema-without-json-schema",
        CHAT,
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        ["json_schema.schema"],
    ),
    ("empty-choice", CHAT, {"guided_choice": []}, "guided_choice", ["empty"]),
    (
        "unknown-function",
        CHAT,
        {"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "mul"}}},
        "tool_choice.function.name",
        ["'mul'", "add"],
    ),
    ("required-without-tools", CHAT, {"tool_choice": "required"}, "tool_choice", ["required"]),
    (
        "bad-parameters-auto",
        CHAT,
        {"tools": [ADD, BAD_PARAMETERS], "tool_choice": "auto"},
        "tools[1].function.parameters",
        ["nope"],
    ),
    (
        "bad-parameters-default-choice",
        CHAT,
        {"tools": [BAD_PARAMETERS]},
        "tools[0].function.parameters",
        ["nope"],
    ),
    # Each tool's schema is checked on its own first, forced call or not: the error names it.
    (
        "bad-parameters-required",
        CHAT,
        {"tools": [ADD, BAD_PARAMETERS], "tool_choice": "required"},
        "tools[1].function.parameters",
        ["nope"],
    ),
    ("duplicate-tool-names", CHAT, {"tools": [ADD, ADD]}, "tools", ["unique", "add"]),
    (
        "forced-call-and-response-format",
        CHAT,
        {"tools": [ADD], "tool_choice": "required", "response_format": {"type": "json_object"}},
        "tool_choice",
        ["response_format"],
    ),
    (
        "max-reasoning-tokens-without-parser",
        CHAT,
        {"max_reasoning_tokens": 8},
        "max_reasoning_tokens",
        ["--reasoning-parser"],
    ),
    (
        "ignore-eos",
        CHAT,
        {"ignore_eos": True, "guided_json": OBJECT},
        "ignore_eos",
        ["ignore_eos", "structured output"],
    ),
    (
        "min-tokens",
        COMPLETIONS,
        {"min_tokens": 2, "guided_json": OBJECT},
        "min_tokens",
        ["min_tokens", "structured output"],
    ),
]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, headers=auth(), timeout=120) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "path, fields, param, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_field_gets_400_naming_it(http, path, fields, param, needles, stream):
    base = {"messages": HI} if path == CHAT else {"prompt": "Hi"}
    response = http.post(path, json={**base, "max_tokens": 4, "stream": stream, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])
    assert http.get("/health").status_code == 200


def test_server_serves_after_the_bad_requests(http):
    assert http.get("/health").status_code == 200
    response = http.post(
        CHAT,
        json={"messages": HI, "max_tokens": 20, "guided_choice": ["yes", "no"], "temperature": 0},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] in ("yes", "no")
