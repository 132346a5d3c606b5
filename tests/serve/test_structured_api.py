"""Structured output through the official `openai` client against a live server (the package's
shared one, tests/serve/conftest.py) on a tiny random model: every output, greedy and sampled,
satisfies its constraint (jsonschema, re.fullmatch, the choices, a grammar's regex as the
oracles). Schemas are bounded (short strings, small integers, enums, maxItems): a random model
otherwise writes until max_tokens, and a cut-off output proves nothing."""

from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.serve.conftest import API_KEY, auth
from tests.structured.schemas import REGEXES, SCHEMAS

MESSAGES = [{"role": "user", "content": "How many apples are left?"}]
MAX_TOKENS = 250
# Greedy, then three seeded samples in one request.
SAMPLINGS = [dict(temperature=0), dict(temperature=1.0, seed=11, n=3)]

CHOICES = ["yes", "no", "maybe so", "日本語"]
# (grammar, syntax, a regex of the same language)
GRAMMARS = [
    (
        'root ::= "(" num (" + " num)? (" + " num)? ")"\nnum ::= [0-9] | [1-9] [0-9]',
        "ebnf",
        r"\((?:[0-9]|[1-9][0-9])(?: \+ (?:[0-9]|[1-9][0-9])){0,2}\)",
    ),
    ('start: "yes" | "no" NUMBER?\nNUMBER: /[0-9]{1,3}/', "lark", r"yes|no(?:[0-9]{1,3})?"),
]


class Item(BaseModel):
    sku: str = Field(max_length=6)
    count: int = Field(ge=1, le=12)


class Order(BaseModel):
    status: Literal["open", "paid", "sent"]
    items: list[Item] = Field(max_length=2)
    note: str | None = Field(max_length=10)
    priority: int = Field(ge=0, le=5)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def _chat(client: openai.OpenAI, sampling: dict, **kwargs) -> list:
    """The choices of one chat request; every one must have stopped by itself."""
    result = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=MAX_TOKENS, **sampling, **kwargs
    )
    assert len(result.choices) == sampling.get("n", 1)
    for choice in result.choices:
        assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
    return result.choices


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_parse_with_a_pydantic_model_returns_the_parsed_object(client, sampling):
    result = client.beta.chat.completions.parse(
        model="tiny",
        messages=MESSAGES,
        response_format=Order,
        max_tokens=MAX_TOKENS,
        **sampling,
    )
    assert len(result.choices) == sampling.get("n", 1)
    for choice in result.choices:
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Order)
        assert choice.message.parsed == Order.model_validate_json(choice.message.content)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate(client, name, sampling):
    schema = SCHEMAS[name]
    response_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    for choice in _chat(client, sampling, response_format=response_format):
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_guided_json_on_completions_validates(client):
    schema = SCHEMAS["enums"]
    for guided_json in (schema, json.dumps(schema)):  # an object or its JSON text
        result = client.completions.create(
            model="tiny",
            prompt="The quick brown fox",
            max_tokens=MAX_TOKENS,
            temperature=1.0,
            seed=5,
            n=3,
            extra_body={"guided_json": guided_json},
        )
        for choice in result.choices:
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.text), schema)


def _token_id(server, text: str) -> int:
    response = httpx.post(
        server.base_url + "/tokenize",
        json={"prompt": text, "add_special_tokens": False},
        headers=auth(),
        timeout=30,
    )
    (token_id,) = response.json()["tokens"]
    return token_id


def test_json_object_outputs_are_objects(client, server):
    # Favouring '"' and '}' ends the random model's strings and objects (unbiased, it writes
    # one key until max_tokens); the grammar still decides where each may go.
    bias = {str(_token_id(server, text)): 6.0 for text in ('"', "}")}
    for sampling in (dict(temperature=0), dict(temperature=1.0, seed=5, n=6)):
        choices = _chat(client, sampling, response_format={"type": "json_object"}, logit_bias=bias)
        for choice in choices:
            assert isinstance(json.loads(choice.message.content), dict)


def test_streamed_json_schema_output_equals_the_whole_one(client):
    schema = SCHEMAS["nested"]
    kwargs = dict(
        model="tiny",
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "stop"
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("pattern", REGEXES)
def test_guided_regex_outputs_match(client, pattern, sampling):
    for choice in _chat(client, sampling, extra_body={"guided_regex": pattern}):
        assert re.fullmatch(pattern, choice.message.content), choice.message.content
    result = client.completions.create(
        model="tiny", prompt="The", max_tokens=60, extra_body={"guided_regex": pattern}, **sampling
    )
    for choice in result.choices:
        assert choice.finish_reason == "stop"
        assert re.fullmatch(pattern, choice.text), choice.text


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_guided_choice_outputs_one_of_the_choices(client, sampling):
    for choice in _chat(client, sampling, extra_body={"guided_choice": CHOICES}):
        assert choice.message.content in CHOICES
    result = client.completions.create(
        model="tiny", prompt="The", max_tokens=60, extra_body={"guided_choice": CHOICES}, **sampling
    )
    assert all(choice.text in CHOICES for choice in result.choices)


@pytest.mark.parametrize("grammar, syntax, oracle", GRAMMARS, ids=["ebnf", "lark"])
def test_guided_grammar_outputs_are_in_the_language(client, grammar, syntax, oracle):
    extra = {"guided_grammar": grammar, "guided_grammar_syntax": syntax}
    for sampling in (dict(temperature=0), dict(temperature=1.0, seed=3, n=6)):
        for choice in _chat(client, sampling, extra_body=extra):
            assert re.fullmatch(oracle, choice.message.content), choice.message.content


def test_structural_tag_response_format(client):
    digit = {"type": "integer", "minimum": 0, "maximum": 9}
    elements = [
        {"type": "const_string", "value": "A="},
        {"type": "json_schema", "json_schema": digit},
    ]
    response_format = {
        "type": "structural_tag",
        "format": {"type": "sequence", "elements": elements},
    }
    for choice in _chat(
        client, dict(temperature=1.0, seed=2, n=3), response_format=response_format
    ):
        assert re.fullmatch(r"A=[0-9]", choice.message.content), choice.message.content
