"""The demo chat template (corral/demo/bpe.py) with tools, rendered by transformers'
apply_chat_template: conversations without tools render byte for byte as before tools were
added; tools are listed in a system turn first; an assistant's tool calls are written in the
format the hermes tool-call parser reads back; tool results are user turns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.demo.bpe import CHAT_TEMPLATE
from corral.structured.tool_parsers.hermes import HermesToolCallParser

# The template before tools were added (corral/demo/bpe.py at 2d5e5df): the reference for
# conversations without tools.
TEMPLATE_BEFORE_TOOLS = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
PLAIN_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "A pen costs $2. How much do 3 pens cost? 🙂"},
        {"role": "assistant", "content": "3 * 2 = 6\nThe answer is 6."},
        {"role": "user", "content": "And 5 pens?"},
    ],
    [{"role": "developer", "content": ""}, {"role": "user", "content": '{"a": "<|end|>"}\n'}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "<tool_call>y"}],
]
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}
QUESTION = [{"role": "user", "content": "What is 2 + 3, and the weather in Paris?"}]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    return tokenizer


def render(tokenizer, messages, add_generation_prompt=True, **kwargs) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def test_conversations_without_tools_render_as_before(hf_tokenizer):
    for messages in PLAIN_CONVERSATIONS:
        for add_generation_prompt in (True, False):
            before = render(
                hf_tokenizer, messages, add_generation_prompt, chat_template=TEMPLATE_BEFORE_TOOLS
            )
            assert render(hf_tokenizer, messages, add_generation_prompt) == before
            assert render(hf_tokenizer, messages, add_generation_prompt, tools=None) == before
            assert render(hf_tokenizer, messages, add_generation_prompt, tools=[]) == before
    assert render(hf_tokenizer, PLAIN_CONVERSATIONS[1][2:4], False) == (
        "<|begin|><|assistant|>3 * 2 = 6\nThe answer is 6.<|end|><|user|>And 5 pens?<|end|>"
    )


def test_tools_are_listed_in_a_system_turn_before_the_messages(hf_tokenizer):
    text = render(hf_tokenizer, QUESTION, tools=[ADD, WEATHER])
    plain = render(hf_tokenizer, QUESTION)
    head = "<|begin|><|system|>Call a tool as <tool_call>\n"
    assert text.startswith(head)
    system_turn, rest = text[len("<|begin|>") :].split("<|end|>", 1)
    assert "<|begin|>" + rest == plain
    _, _, instructions, *tool_lines = system_turn.split("\n")
    assert instructions == "</tool_call>. Tools:"
    assert [json.loads(line) for line in tool_lines] == [ADD["function"], WEATHER["function"]]
    # A bare function (no "type"/"function" wrapper) is listed as it is.
    bare = render(hf_tokenizer, QUESTION, tools=[WEATHER["function"]])
    assert bare == render(hf_tokenizer, QUESTION, tools=[WEATHER])


def _assistant_turn(text: str) -> str:
    """The body of the last assistant turn of a rendered conversation."""
    body = text.rsplit("<|assistant|>", 1)[1]
    return body.split("<|end|>", 1)[0]


@pytest.mark.parametrize("content", ["", "Let me check."])
@pytest.mark.parametrize("arguments_as", ["string", "object"])
def test_assistant_tool_calls_render_in_the_hermes_parser_format(
    hf_tokenizer, content, arguments_as
):
    arguments = [{"a": 2, "b": 3}, {"city": "Paris", "note": 'é"<'}]
    calls = [
        {
            "id": f"call-{index}",
            "type": "function",
            "function": {
                "name": name,
                "arguments": json.dumps(args) if arguments_as == "string" else args,
            },
        }
        for index, (name, args) in enumerate(zip(["add", "weather"], arguments))
    ]
    messages = [*QUESTION, {"role": "assistant", "content": content, "tool_calls": calls}]
    text = render(hf_tokenizer, messages, add_generation_prompt=False, tools=[ADD, WEATHER])
    assert text.endswith("<|end|>")
    body = _assistant_turn(text)
    parsed = HermesToolCallParser().extract(body)
    assert [call.name for call in parsed.tool_calls] == ["add", "weather"]
    assert [json.loads(call.arguments) for call in parsed.tool_calls] == arguments
    assert (parsed.content or "").strip() == content
    first_call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert body.startswith(content + ("\n" if content else "") + first_call + "\n<tool_call>\n")


def test_tool_results_render_as_user_turns(hf_tokenizer):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {"role": "tool", "tool_call_id": "c2", "content": '{"sky": "clear"}'},
    ]
    text = render(hf_tokenizer, messages, tools=[ADD])
    assert text.endswith(
        "<|assistant|><tool_call>\n"
        '{"name": "add", "arguments": {}}\n'
        "</tool_call><|end|>"
        "<|user|><tool_response>\n5\n</tool_response><|end|>"
        '<|user|><tool_response>\n{"sky": "clear"}\n</tool_response><|end|>'
        "<|assistant|>"
    )
    assert "<|tool|>" not in text


def test_corral_encodes_tool_chats_like_transformers(hf_tokenizer, tokenizer_dir: Path):
    from corral.engine.tokenizer import Tokenizer

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    messages = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    expected = hf_tokenizer.apply_chat_template(
        messages, tools=[ADD], add_generation_prompt=True, tokenize=True
    )
    expected = list(getattr(expected, "input_ids", expected))
    actual = Tokenizer(tokenizer_dir).encode_chat(messages, tools=[ADD])
    assert actual == expected
    assert expected.count(hf_tokenizer.bos_token_id) == 1
    assert expected.count(hf_tokenizer.eos_token_id) == 1 + len(messages)  # and the tools turn
