"""Every malformed or out-of-range request gets the right status and an OpenAI-style error whose
message names the problem; the server keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import API_KEY, auth

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]

# (path, JSON body, status, substrings the message must hold, param)
CASES = [
    (COMPLETIONS, {"prompt": "x", "max_tokens": 0}, 400, ["max_tokens", ">= 1", "0"], "max_tokens"),
    (
        COMPLETIONS,
        {"prompt": "x", "max_tokens": 100000},
        400,
        ["prompt tokens", "100000 requested completion tokens", "context length of 512"],
        None,
    ),
    (
        COMPLETIONS,
        {"prompt": [7] * 600},
        400,
        ["600 prompt tokens", "16 requested completion tokens", "context length of 512"],
        None,
    ),
    (COMPLETIONS, {"prompt": "x", "temperature": -1}, 400, ["temperature", "-1"], "temperature"),
    (COMPLETIONS, {"prompt": "x", "temperature": "hot"}, 400, ["temperature", "hot"], None),
    (COMPLETIONS, {"prompt": "x", "top_p": 0}, 400, ["top_p", "(0.0, 1.0]", "0"], "top_p"),
    (COMPLETIONS, {"prompt": "x", "n": 0}, 400, ["n must be in [1, 128]", "got 0"], "n"),
    (COMPLETIONS, {"prompt": "x", "n": 500}, 400, ["n must be in [1, 128]", "got 500"], "n"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 50}, 400, ["logprobs", "[0, 20]", "50"], "logprobs"),
    (COMPLETIONS, {"prompt": [1, 99999]}, 400, ["99999", "[0, 512)"], "prompt"),
    (COMPLETIONS, {"prompt": []}, 400, ["prompt must not be empty"], "prompt"),
    (COMPLETIONS, {"max_tokens": 3}, 400, ["prompt", "required"], "prompt"),
    (COMPLETIONS, {"prompt": "x", "max_token": 5}, 400, ["unrecognized", "max_token"], None),
    (COMPLETIONS, {"prompt": "x", "suffix": "!"}, 400, ["suffix is not supported"], "suffix"),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, 400, ["best_of", "3", "n=1"], "best_of"),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"abc": 1}}, 400, ["token ids", "abc"], None),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"5": 500}}, 400, ["[-100.0, 100.0]", "500"], None),
    (COMPLETIONS, {"prompt": "x", "logit_bias": {"9999": 1}}, 400, ["9999", "[0, 512)"], None),
    (COMPLETIONS, {"prompt": "x", "stop": ["a"] * 40}, 400, ["40 strings", "at most 32"], "stop"),
    (COMPLETIONS, {"prompt": "x", "stop": [""]}, 400, ["stop strings must not be empty"], "stop"),
    (COMPLETIONS, {"prompt": "x", "stop_token_ids": [99999]}, 400, ["99999", "512"], None),
    (COMPLETIONS, {"prompt": "x", "seed": 2**70}, 400, ["seed must be in", str(2**70)], "seed"),
    (
        COMPLETIONS,
        {"prompt": "x", "max_tokens": 5, "min_tokens": 10},
        400,
        ["min_tokens (10)", "max_tokens (5)"],
        "min_tokens",
    ),
    (COMPLETIONS, {"prompt": "x", "n": 7}, 400, ["n = 7", "queue bound of 6"], None),
    (COMPLETIONS, {"prompt": "x", "model": "gpt-4"}, 404, ["'gpt-4' does not exist"], "model"),
    (COMPLETIONS, [1, 2], 400, ["JSON object", "list"], None),
    (CHAT, {"messages": []}, 400, ["at least one message"], "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, ["role", "wizard"], None),
    (CHAT, {"messages": HI, "top_logprobs": 3}, 400, ["top_logprobs (3)", "logprobs"], None),
    (CHAT, {"messages": HI, "tools": [{"type": "function"}]}, 400, ["tools"], "tools"),
    (
        CHAT,
        {"messages": HI, "response_format": {"type": "xml"}},
        400,
        ["response_format", "json_object"],
        "response_format.type",
    ),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        ["image_url", "not supported"],
        "messages",
    ),
    (
        CHAT,
        {"messages": HI, "max_completion_tokens": -3},
        400,
        ["max_completion_tokens", "-3"],
        None,
    ),
    ("/detokenize", {"tokens": [-1]}, 400, ["-1", "[0, 512)"], None),
    ("/tokenize", {}, 400, ["exactly one of prompt and messages"], "prompt"),
]


@pytest.mark.parametrize(
    "path, body, status, fragments, param", CASES, ids=[str(i) for i in range(len(CASES))]
)
def test_bad_request_is_refused_with_a_clear_message(server, path, body, status, fragments, param):
    response = httpx.post(server.base_url + path, json=body, headers=auth(), timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b'{"prompt": "x", "temperature": NaN}', "temperature"),
        (b'{"prompt": "x"', "not valid JSON"),
        (b"", "empty"),
        (b"[" * 50000 + b"]" * 50000, "not valid JSON"),
        (b'{"prompt": "\xff\xfe"}', "not valid JSON"),
        (b'{"prompt": "a\\ud800b"}', "lone surrogate"),
        (b'{"prompt": "a", "stop": ["\\udfff"]}', "lone surrogate"),
        (b'{"prompt": "\xed\xa0\x80"}', "lone surrogate"),
    ],
    ids=["nan", "truncated", "empty", "deep", "bad-utf8", "surrogate", "surrogate-stop", "cesu"],
)
def test_malformed_bodies_get_400(server, raw, fragment):
    response = httpx.post(
        server.base_url + COMPLETIONS,
        content=raw,
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_oversized_body_gets_413_declared_or_chunked(server):
    body = b'{"prompt": "' + b"a" * 300_000 + b'"}'
    declared = httpx.post(server.base_url + COMPLETIONS, content=body, headers=auth())
    assert declared.status_code == 413
    assert "200000 bytes" in declared.json()["error"]["message"]

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    chunked = httpx.post(server.base_url + COMPLETIONS, content=chunks(), headers=auth())
    assert chunked.status_code == 413
    assert "--max-request-body-bytes" in chunked.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_the_error_format(server):
    missing = httpx.get(server.base_url + "/v1/nothing-here", headers=auth())
    assert missing.status_code == 404 and "message" in missing.json()["error"]
    wrong_method = httpx.get(server.base_url + COMPLETIONS, headers=auth())
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_the_server_still_serves_after_bad_input(server):
    response = httpx.post(
        server.base_url + COMPLETIONS,
        json={"prompt": "The quick", "max_tokens": 4, "temperature": 0},
        headers=auth(),
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4
    assert httpx.get(server.base_url + "/health").status_code == 200
    assert API_KEY not in server.log()
