"""Tool calling through the official `openai` client against a live server (the package's shared
one; --tool-call-parser hermes by default) on a tiny random model. Forced calls (tool_choice
"required" or a named function) always parse, name a given tool and carry arguments that
validate against its parameters (jsonschema as the oracle); finish_reason is "tool_calls";
streamed call deltas add up to the whole response's calls.

The demo template lists each tool's JSON in the prompt: about 230 tokens per small tool with the
test tokenizer, so requests carry one or two tools to fit the 512-token context."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.serve.conftest import API_KEY, auth

MESSAGES = [{"role": "user", "content": "Hi"}]
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
    },
}
PING = {
    "type": "function",
    "function": {
        "name": "ping",
        "parameters": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
        },
    },
}
TOOLS = {"add": ADD, "weather": WEATHER, "ping": PING}
SAMPLINGS = [dict(temperature=0), dict(temperature=1.0, seed=1), dict(temperature=1.0, seed=2)]
NAMED_WEATHER = {"type": "function", "function": {"name": "weather"}}
NAMED_PING = {"type": "function", "function": {"name": "ping"}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def assert_valid_calls(calls, allowed: set[str]) -> None:
    """Each call has an id, names an allowed tool, and its arguments validate."""
    assert calls
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name in allowed
        parameters = TOOLS[call.function.name]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), parameters)
    assert len({call.id for call in calls}) == len(calls)


# (tools, tool_choice, the tools a call may name, max_tokens)
FORCED = [
    ([ADD], "required", {"add"}, 150),
    ([WEATHER], NAMED_WEATHER, {"weather"}, 150),
    ([ADD, PING], "required", {"add", "ping"}, 150),
    ([ADD, PING], NAMED_PING, {"ping"}, 150),
]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seed1", "seed2"])
@pytest.mark.parametrize(
    "tools, tool_choice, allowed, max_tokens",
    FORCED,
    ids=["required", "named", "required-of-two", "named-of-two"],
)
def test_forced_call_is_one_valid_call(client, tools, tool_choice, allowed, max_tokens, sampling):
    result = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=max_tokens,
        **sampling,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1
    assert_valid_calls(choice.message.tool_calls, allowed)
    assert not (choice.message.content or "").strip()


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seed1", "seed2"])
@pytest.mark.parametrize("tool_choice", ["required", NAMED_WEATHER], ids=["required", "named"])
def test_parallel_calls_each_validate(client, tool_choice, sampling):
    result = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice=tool_choice,
        max_tokens=150,
        **sampling,
    )
    choice = result.choices[0]
    # Without parallel_tool_calls=False the random model may keep calling until max_tokens.
    assert choice.finish_reason in ("tool_calls", "length"), choice
    assert_valid_calls(choice.message.tool_calls, {"weather"})


def test_tool_choice_none_gives_no_calls(client):
    for tools in ([ADD], [WEATHER]):
        result = client.chat.completions.create(
            model="tiny", messages=MESSAGES, tools=tools, tool_choice="none", max_tokens=30
        )
        choice = result.choices[0]
        assert not choice.message.tool_calls
        assert choice.finish_reason in ("stop", "length")


def _streamed_calls(chunks) -> tuple[dict[int, dict], list[str | None]]:
    calls: dict[int, dict] = {}
    finish_reasons = []
    for chunk in chunks:
        for choice in chunk.choices:
            finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"ids": [], "names": [], "arguments": ""})
                if delta.id is not None:
                    call["ids"].append(delta.id)
                if delta.function is not None:
                    if delta.function.name is not None:
                        call["names"].append(delta.function.name)
                    call["arguments"] += delta.function.arguments or ""
    return calls, finish_reasons


@pytest.mark.parametrize(
    "tool_choice, parallel, sampling",
    [
        ("required", False, dict(temperature=0)),
        (NAMED_WEATHER, False, dict(temperature=1.0, seed=7)),
        ("required", True, dict(temperature=1.0, seed=1)),
    ],
    ids=["required-greedy", "named-seeded", "parallel-seeded"],
)
def test_streamed_calls_add_up_to_the_whole_response(client, tool_choice, parallel, sampling):
    tools = [WEATHER] if tool_choice is NAMED_WEATHER else [ADD]
    kwargs = dict(
        model="tiny",
        messages=MESSAGES,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        max_tokens=150,
        **sampling,
    )
    whole = client.chat.completions.create(**kwargs).choices[0]
    assert whole.message.tool_calls
    calls, finish_reasons = _streamed_calls(client.chat.completions.create(**kwargs, stream=True))
    assert sorted(calls) == list(range(len(whole.message.tool_calls)))
    for index, expected in enumerate(whole.message.tool_calls):
        streamed = calls[index]
        assert len(streamed["ids"]) == 1 and streamed["names"] == [expected.function.name]
        assert streamed["arguments"] == expected.function.arguments
    assert [reason for reason in finish_reasons if reason] == [whole.finish_reason]
    if not parallel:
        assert whole.finish_reason == "tool_calls"


def test_conversation_with_calls_and_results_is_accepted(client, server):
    messages = [
        {"role": "user", "content": "Add 2 and 3"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "5"},
    ]
    result = client.chat.completions.create(
        model="tiny", messages=messages, tools=[ADD], max_tokens=20, temperature=0
    )
    assert result.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The prompt holds the rendered call and result: longer than without them.
    shorter = client.chat.completions.create(
        model="tiny", messages=messages[:1], tools=[ADD], max_tokens=1
    )
    assert result.usage.prompt_tokens > shorter.usage.prompt_tokens + 20
    rendered = httpx.post(
        server.base_url + "/tokenize", json={"messages": messages}, headers=auth(), timeout=30
    )
    assert rendered.status_code == 200, rendered.text
