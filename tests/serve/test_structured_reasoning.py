"""Reasoning output through the official `openai` client against a live server started with
--reasoning-parser deepseek_r1 (the output starts inside the thinking block) on a tiny random
model: reasoning_content is split from content, streamed deltas add up to the whole response,
and max_reasoning_tokens=N closes the block after at most N tokens, after which the content
satisfies the request's constraint (choices, a JSON schema, a forced tool call)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.serve.conftest import API_KEY, auth

MESSAGES = [{"role": "user", "content": "How many apples are left?"}]
END_TEXT = "</think>"
CHOICES = ["yes", "no", "maybe so"]
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 99},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "sure"],
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"],
        },
    },
}


@pytest.fixture(scope="module")
def reasoning_server(start_server):
    return start_server(
        "--api-key", API_KEY, "--served-model-name", "tiny", "--reasoning-parser", "deepseek_r1"
    )


@pytest.fixture(scope="module")
def client(reasoning_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=reasoning_server.base_url + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def num_end_tokens(reasoning_server) -> int:
    """How many tokens END_TEXT takes (the ids the engine forces to close the block)."""
    response = httpx.post(
        reasoning_server.base_url + "/tokenize",
        json={"prompt": END_TEXT, "add_special_tokens": False},
        headers=auth(),
        timeout=30,
    )
    num_tokens = response.json()["count"]
    assert num_tokens > 1  # the test tokenizer has no token for the tag
    return num_tokens


def _num_reasoning_tokens(choice, num_end_tokens: int) -> int:
    """How many output tokens come before the first END_TEXT (from the chat logprobs)."""
    tokens = [entry.token for entry in choice.logprobs.content]
    for start in range(len(tokens) - num_end_tokens + 1):
        if "".join(tokens[start : start + num_end_tokens]) == END_TEXT:
            return start
    raise AssertionError(f"no {END_TEXT} in the output tokens {tokens}")


def _reasoning(message) -> str | None:
    return getattr(message, "reasoning_content", None)


def test_without_a_budget_the_whole_output_is_reasoning(client):
    choice = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=30, temperature=0
    ).choices[0]
    assert choice.finish_reason == "length"
    assert _reasoning(choice.message) and choice.message.content is None


@pytest.mark.parametrize("budget", [0, 1, 5, 12])
def test_budget_closes_the_block_then_the_choice_follows(client, num_end_tokens, budget):
    for sampling in (dict(temperature=0), dict(temperature=1.0, seed=4, n=3)):
        result = client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=100,
            logprobs=True,
            extra_body={"max_reasoning_tokens": budget, "guided_choice": CHOICES},
            **sampling,
        )
        for choice in result.choices:
            assert choice.finish_reason == "stop"
            assert choice.message.content in CHOICES
            assert _num_reasoning_tokens(choice, num_end_tokens) <= budget
            if budget == 0:
                assert _reasoning(choice.message) is None


def test_budget_then_a_json_schema(client, num_end_tokens):
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    result = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=120,
        logprobs=True,
        temperature=1.0,
        seed=9,
        n=3,
        response_format=response_format,
        extra_body={"max_reasoning_tokens": 8},
    )
    for choice in result.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert _num_reasoning_tokens(choice, num_end_tokens) <= 8
        assert _reasoning(choice.message)


def test_budget_then_a_forced_tool_call(client):
    choice = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=[ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
        extra_body={"max_reasoning_tokens": 6},
    ).choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), ADD["function"]["parameters"])
    assert _reasoning(choice.message)


@pytest.mark.parametrize(
    "extra",
    [{}, {"max_reasoning_tokens": 6}, {"max_reasoning_tokens": 6, "guided_choice": CHOICES}],
    ids=["no-budget", "budget", "budget-and-choice"],
)
def test_streamed_reasoning_and_content_add_up_to_the_whole_response(client, extra):
    kwargs = dict(
        model="tiny",
        messages=MESSAGES,
        max_tokens=40,
        temperature=1.0,
        seed=21,
        extra_body=extra,
    )
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    reasoning = "".join(_reasoning(c.choices[0].delta) or "" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert reasoning == (_reasoning(whole.message) or "")
    assert content == (whole.message.content or "")
    assert reasoning  # every variant reasons first
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        whole.finish_reason
    ]
