"""Hypothesis strategies for bad (and borderline good) request bodies, where schemathesis does not
reach: values that depend on the served model (token ids around the vocabulary), extreme numbers,
wrong JSON types, unicode edge cases (lone surrogates as JSON escapes among them), stop lists and
logit_bias maps of every size, n and best_of at and past their limits, raw bodies that are not
quite JSON. Bodies are built as JSON text, so that NaN, 1e400 and invalid UTF-8 can be sent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

VOCAB_SIZE = 512  # the test tokenizer's (tests/conftest.py); checked against the model's config
MAX_MODEL_LEN = 64  # fuzz_support.SERVER_ARGS
INT64 = 2**63


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is (NaN, Infinity, 1e400, a 40-digit integer, ...)."""

    text: str


def to_json(value: Any) -> str:
    """JSON text of value; Raw values verbatim, strings ASCII-escaped (a lone surrogate becomes
    the escape \\udXXX, which json.loads turns back into a lone surrogate)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (f"{json.dumps(str(key))}: {to_json(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(item) for item in value) + "]"
    return json.dumps(value)


# ----- values -------------------------------------------------------------------------------

token_ids = st.one_of(
    st.integers(0, VOCAB_SIZE - 1),
    st.sampled_from([-1, VOCAB_SIZE, VOCAB_SIZE + 1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30]),
    st.integers(-(2**70), 2**70),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 127, 128, 129, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -0.0, 5e-324, 1e-38, 1e-5, 1e308, 100.00000000000001, 2.0000000001]),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e400")]),
    st.sampled_from([Raw("1" * 40), Raw("-" + "9" * 40), Raw("1.0"), Raw("1E2"), Raw("-0")]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# Every code point, lone surrogates included; and the ones known to trip text handling.
edge_characters = st.sampled_from(
    ["\ud800", "\udfff", "\ud83d", "\x00", "\ufeff", "\u202e", "\u0301", "\uffff", "\U0010ffff"]
    + ["\U0001f469\u200d\U0001f4bb", "\r\n", "\t", "\\", '"', "</s>", "<|endoftext|>", "日本"]
)
texts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.lists(edge_characters | st.text(max_size=3), max_size=12).map("".join),
    st.sampled_from(["", " ", "a" * 5000, "\ud800" * 50, "\x00" * 20]),
)
stops = st.one_of(
    texts,
    st.lists(texts, max_size=40),
    st.sampled_from([[], [""], ["a"] * 32, ["a"] * 33, ["a"] * 5000, ["x" * 20000]]),
)
bias_keys = st.one_of(
    token_ids.map(str),
    st.sampled_from(["", " 5", "5 ", "+5", "05", "1_0", "\u0665", "5.0", "-0", "0x1f", "NaN"]),
    texts,
)
logit_biases = st.dictionaries(bias_keys, numbers | json_values, max_size=6) | st.sampled_from(
    [{str(i): 100.0 for i in range(VOCAB_SIZE)}, {"5": -100.0}, {"5": Raw("1e400")}]
)
ns = st.sampled_from([0, 1, 2, 4, 8, 16, 128, 129, -1, 2**31, 2**63, 10**30])
booleans_or_not = st.booleans() | json_values


def _field(valid: st.SearchStrategy, *edges: Any) -> st.SearchStrategy:
    """Half the time a value the server must accept (edges: more such values, at the limits),
    else an extreme number or a wrong type."""
    inside = valid | st.sampled_from(edges) if edges else valid
    return st.one_of(inside, inside, numbers, json_values)


def _floats(low: float, high: float, *, exclude_min: bool = False) -> st.SearchStrategy:
    return st.floats(low, high, exclude_min=exclude_min)


valid_ns = st.integers(1, 4) | st.sampled_from([16, 128])
COMMON_FIELDS: dict[str, st.SearchStrategy] = {
    "n": _field(valid_ns) | ns,
    "temperature": _field(_floats(0.0, 2.0), 0, 1e-38, 1e-5, 2),
    "top_p": _field(_floats(0.0, 1.0, exclude_min=True), 5e-324, 1e-10, 1),
    "top_k": _field(st.integers(-1, VOCAB_SIZE), VOCAB_SIZE + 1),
    "min_p": _field(_floats(0.0, 1.0), 0, 1),
    "seed": _field(st.integers(-INT64, INT64 - 1)),
    "presence_penalty": _field(_floats(-2.0, 2.0)),
    "frequency_penalty": _field(_floats(-2.0, 2.0)),
    "repetition_penalty": _field(_floats(0.0, 2.0, exclude_min=True), 5e-324, 1e-30, 2),
    "min_tokens": _field(st.integers(0, MAX_MODEL_LEN), MAX_MODEL_LEN + 1),
    "priority": _field(st.integers(-INT64, INT64 - 1)),
    "deadline_s": _field(_floats(0.0, 604800.0, exclude_min=True), 5e-324, 1e-9),
    "stop": _field(stops),
    "stop_token_ids": _field(st.lists(token_ids, max_size=8)),
    "logit_bias": _field(logit_biases),
    "stream": booleans_or_not,
    "stream_options": _field(st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})),
    "ignore_eos": booleans_or_not,
    "include_stop_str_in_output": booleans_or_not,
    "skip_special_tokens": booleans_or_not,
    "user": _field(texts),
    "cache_salt": _field(texts),
    "model": st.sampled_from(["tiny", None]) | texts,
}
max_tokens = _field(st.integers(1, MAX_MODEL_LEN), MAX_MODEL_LEN + 1)
num_logprobs = _field(st.integers(0, 20), 21)
COMPLETION_FIELDS = {
    **COMMON_FIELDS,
    "max_tokens": max_tokens,
    "logprobs": num_logprobs,
    "prompt_logprobs": num_logprobs,
    "echo": booleans_or_not,
    "best_of": _field(valid_ns) | ns,
    "suffix": _field(texts),
}
CHAT_FIELDS = {
    **COMMON_FIELDS,
    "max_tokens": max_tokens,
    "max_completion_tokens": max_tokens,
    "logprobs": booleans_or_not,
    "top_logprobs": num_logprobs,
    "add_generation_prompt": booleans_or_not,
    "continue_final_message": booleans_or_not,
    "response_format": _field(st.fixed_dictionaries({"type": st.sampled_from(["text", "json"])})),
    "tool_choice": _field(st.sampled_from(["none", "auto", "required"])),
}

prompts = st.one_of(
    texts,
    texts,
    st.lists(st.integers(0, VOCAB_SIZE - 1), min_size=1, max_size=MAX_MODEL_LEN),
    st.lists(texts, max_size=4),
    st.lists(token_ids, max_size=MAX_MODEL_LEN + 4),
    st.lists(st.lists(token_ids, min_size=0, max_size=20), max_size=4),
    st.sampled_from([[], [[]], [""], ["a"] * 257, [[1]] * 257]),
    json_values,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
text_parts = st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts}),
    max_size=3,
)
good_messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": texts | text_parts}), min_size=1, max_size=4
)
any_messages = st.lists(
    st.fixed_dictionaries({"role": roles | texts, "content": texts | text_parts | json_values}),
    max_size=4,
)
messages = st.one_of(good_messages, good_messages, any_messages, json_values)


def _with_fields(
    base: dict[str, Any], fields: dict[str, st.SearchStrategy], max_fields: int
) -> st.SearchStrategy[dict[str, Any]]:
    names = st.lists(st.sampled_from(sorted(fields)), max_size=max_fields, unique=True)
    return names.flatmap(
        lambda chosen: st.fixed_dictionaries({name: fields[name] for name in chosen})
    ).map(lambda extra: {**base, **extra})


def completion_bodies(max_fields: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    return prompts.flatmap(
        lambda prompt: _with_fields(
            {"prompt": prompt, "max_tokens": 4}, COMPLETION_FIELDS, max_fields
        )
    )


def chat_bodies(max_fields: int = 4) -> st.SearchStrategy[dict[str, Any]]:
    return messages.flatmap(
        lambda chat: _with_fields({"messages": chat, "max_tokens": 4}, CHAT_FIELDS, max_fields)
    )


tokenize_bodies = st.one_of(
    st.fixed_dictionaries(
        {"prompt": _field(texts)}, optional={"add_special_tokens": st.booleans()}
    ),
    st.fixed_dictionaries({"messages": messages}),
    st.fixed_dictionaries({"prompt": texts, "messages": messages}),
)
detokenize_bodies = st.fixed_dictionaries({"tokens": _field(st.lists(token_ids, max_size=50))})
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b'{"prompt": "\xff\xfe", "max_tokens": 2}',
            b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}',  # a surrogate as UTF-8 bytes
            b'{"prompt": "a", "prompt": [1, 2], "max_tokens": 2}',
            b'{"prompt": "a", "max_tokens": 2} trailing',
            b'{"prompt": "a", "max_tokens": 2, "n": 1e400}',
            b'\xef\xbb\xbf{"prompt": "a", "max_tokens": 2}',
            b'{"prompt": "' + b"\\ud800" * 1000 + b'", "max_tokens": 2}',
            b"[" * 100000,
            b'{"a": ' * 5000 + b"1" + b"}" * 5000,
            b"null",
            b'"prompt"',
        ]
    ),
)
