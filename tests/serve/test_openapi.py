"""/openapi.json describes every request and response body, and the bounds it documents are the
ones enforced: for each bounded field the boundary value is accepted and the value just past it
refused, read from the published schema itself."""

from __future__ import annotations

import math
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.config import ServerConfig

KEY = "openapi-test-key-0000"
HEADERS = {"Authorization": f"Bearer {KEY}"}
BODY_ROUTES = {
    "/v1/completions": "CompletionRequest",
    "/v1/chat/completions": "ChatCompletionRequest",
    "/tokenize": "TokenizeRequest",
    "/detokenize": "DetokenizeRequest",
}
# Fields each request needs; max_tokens 1 keeps the accepted ones short.
BASES = {
    "CompletionRequest": ("/v1/completions", {"prompt": "The quick", "max_tokens": 1}),
    "ChatCompletionRequest": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "logprobs": True},
    ),
}


@pytest.fixture(scope="module")
def client(tiny_model):
    engine = AsyncLLM(
        engine_config_from_kwargs(
            model=str(tiny_model), dtype="float32", num_blocks=300, max_model_len=256
        ),
        multiprocess=False,
    )
    with TestClient(build_app(engine, ServerConfig(api_keys=(KEY,)))) as client:
        yield client


@pytest.fixture(scope="module")
def spec(client) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=HEADERS)
    assert response.status_code == 200
    return response.json()


def _component(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][name]


def test_every_post_route_documents_its_request_body(spec):
    for path, model in BODY_ROUTES.items():
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}"
        assert _component(spec, model)["properties"], model
    completion = _component(spec, "CompletionRequest")
    assert completion["required"] == ["prompt"]
    assert completion["additionalProperties"] is False
    temperature = completion["properties"]["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (0.0, 2.0)
    n = completion["properties"]["n"]
    assert (n["minimum"], n["maximum"], n["default"]) == (1, 128, 1)
    assert "max-queued-requests" in n["description"]  # a limit of the server's flags
    roles = _component(spec, "ChatMessage")["properties"]["role"]["enum"]
    assert roles == ["system", "developer", "user", "assistant", "tool"]


def test_responses_are_documented_and_no_422_appears(spec):
    for path, model in [
        ("/v1/completions", "CompletionResponse"),
        ("/v1/chat/completions", "ChatCompletionResponse"),
        ("/tokenize", "TokenizeResponse"),
        ("/detokenize", "DetokenizeResponse"),
    ]:
        responses = spec["paths"][path]["post"]["responses"]
        ok = responses["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok == f"#/components/schemas/{model}"
        for status in ("400", "401", "413", "503"):
            error = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert error == "#/components/schemas/ErrorResponse"
        assert spec["paths"][path]["post"]["security"] == [{"bearer": []}]
    models = spec["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    assert models["application/json"]["schema"]["$ref"] == "#/components/schemas/ModelList"
    assert (
        "text/event-stream"
        in spec["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]
    )
    assert "security" not in spec["paths"]["/health"]["get"]
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"]


def test_real_responses_match_their_documented_schemas(client, spec):
    def check(path: str, model: str, body: dict[str, Any]) -> None:
        response = client.post(path, json=body, headers=HEADERS)
        document = {"$ref": f"#/components/schemas/{model}", "components": spec["components"]}
        jsonschema_rs.validator_for(document).validate(response.json())

    check("/v1/completions", "CompletionResponse", {"prompt": "Hi", "max_tokens": 2, "logprobs": 2})
    check(
        "/v1/chat/completions",
        "ChatCompletionResponse",
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logprobs": True},
    )
    check("/tokenize", "TokenizeResponse", {"prompt": "Hi"})
    check("/detokenize", "DetokenizeResponse", {"tokens": [5, 6]})
    check("/v1/completions", "ErrorResponse", {"prompt": "Hi", "n": 0})


def _numeric_bounds(schema: dict[str, Any]) -> list[tuple[str, float, bool, bool]]:
    """(keyword, bound, is_integer, is_exclusive) of each bound in a property's schema."""
    member = next((m for m in schema.get("anyOf", [schema]) if m.get("type") != "null"), schema)
    is_integer = member.get("type") == "integer"
    keywords = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    return [
        (keyword, member[keyword], is_integer, keyword.startswith("exclusive"))
        for keyword in keywords
        if keyword in member
    ]


def _around(keyword: str, bound: float, is_integer: bool, exclusive: bool) -> tuple[Any, Any]:
    """(a value on the accepted side at the bound, the value just past it)."""
    below = keyword.endswith("inimum")
    step = -1 if below else 1
    if is_integer:
        inside, outside = int(bound), int(bound) + step
        if exclusive:
            inside, outside = int(bound) - step, int(bound)
        return inside, outside
    toward_outside = -math.inf if below else math.inf
    if exclusive:
        return math.nextafter(bound, -toward_outside), float(bound)
    return float(bound), math.nextafter(bound, toward_outside)


# Fields refused on this server whatever their value, for want of a flag (checked elsewhere:
# tests/serve/test_structured_reasoning.py runs a server with --reasoning-parser).
NEEDS_SERVER_FLAGS = {"max_reasoning_tokens"}


def _send(client, model: str, field: str, value: Any):
    path, base = BASES[model]
    body = {**base, field: value}
    if field == "best_of":  # only supported equal to n
        body["n"] = value if 1 <= value <= 128 else 1
    if field == "stop_when_agreed":  # at most n, which must be at least 2
        body["n"] = value if 2 <= value <= 128 else 2
    if field == "session_pause_s":  # a pause of a session
        body["session_id"] = "bounds"
    return client.post(path, json=body, headers=HEADERS)


@pytest.mark.parametrize("model", sorted(BASES))
def test_documented_bounds_are_the_enforced_ones(client, spec, model):
    checked = []
    for field, schema in _component(spec, model)["properties"].items():
        if field in NEEDS_SERVER_FLAGS:
            continue
        for keyword, bound, is_integer, exclusive in _numeric_bounds(schema):
            inside, outside = _around(keyword, bound, is_integer, exclusive)
            accepted = _send(client, model, field, inside)
            assert accepted.status_code == 200, (field, inside, accepted.text)
            refused = _send(client, model, field, outside)
            assert refused.status_code == 400, (field, outside, refused.text)
            error = refused.json()["error"]
            assert error["param"] == field, error
            assert field in error["message"] and str(bound) in error["message"], error
            checked.append((field, keyword))
    # The schema did document the bounds this test is about.
    for expected in [("temperature", "maximum"), ("top_p", "exclusiveMinimum"), ("n", "maximum")]:
        assert expected in checked


def test_list_string_and_map_bounds_are_the_enforced_ones(client, spec):
    properties = _component(spec, "CompletionRequest")["properties"]
    stop = properties["stop"]["anyOf"][0]["oneOf"][1]
    salt = properties["cache_salt"]["anyOf"][0]
    bias = properties["logit_bias"]["anyOf"][0]
    cases = [
        ("stop", ["a"] * stop["maxItems"], ["a"] * (stop["maxItems"] + 1)),
        ("stop", "a" * stop["items"]["minLength"], ""),
        ("cache_salt", "s" * salt["maxLength"], "s" * (salt["maxLength"] + 1)),
        ("cache_salt", "s" * salt["minLength"], ""),
        (
            "logit_bias",
            {"5": bias["additionalProperties"]["maximum"]},
            {"5": math.nextafter(bias["additionalProperties"]["maximum"], math.inf)},
        ),
        ("logit_bias", {"5": 1.0}, {"+5": 1.0}),  # keys: propertyNames' pattern
    ]
    assert bias["propertyNames"] == {"pattern": "^[0-9]+$"}
    for field, inside, outside in cases:
        accepted = _send(client, "CompletionRequest", field, inside)
        assert accepted.status_code == 200, (field, accepted.text)
        refused = _send(client, "CompletionRequest", field, outside)
        assert refused.status_code == 400, (field, refused.text)
        assert refused.json()["error"]["param"] == field


def test_wrong_json_types_are_refused_as_the_schema_says(client):
    """The schema says number / integer / boolean; strings, booleans for numbers and floats for
    integers are refused, not coerced."""
    for field, value in [
        ("temperature", "0.5"),
        ("temperature", True),
        ("n", 2.5),
        ("echo", 1),
        ("max_tokens", "3"),
    ]:
        response = _send(client, "CompletionRequest", field, value)
        assert response.status_code == 400, (field, value, response.text)
        assert response.json()["error"]["param"] == field
