"""Hypothesis against a live server with the bodies schemathesis does not make (see
fuzz_strategies): every answer is a 200 with the right shape or a 4xx in the error format, never
a 5xx (streamed or not) or a hang; afterwards the engine is alive and its KV pool intact."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.serve import fuzz_strategies as strategies
from tests.serve.conftest import auth
from tests.serve.fuzz_support import (
    REQUEST_TIMEOUT_S,
    assert_engine_alive_and_kv_intact,
    num_examples,
)

pytestmark = pytest.mark.slow

ERROR_STATUSES = {400, 404, 413}


@pytest.fixture(scope="module")
def http(fuzz_server, tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["vocab_size"] == strategies.VOCAB_SIZE
    with httpx.Client(
        base_url=fuzz_server.base_url, headers=auth(), timeout=REQUEST_TIMEOUT_S
    ) as client:
        yield client


def _events(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", text[-500:]
    return [json.loads(event) for event in events[:-1]]


def _expected_choices(path: str, body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if path == "/v1/chat/completions":
        return n
    prompt = body["prompt"]
    return n * (1 if isinstance(prompt, str) or isinstance(prompt[0], int) else len(prompt))


def check_answer(path: str, body: Any, response: httpx.Response, server_log: str) -> None:
    """A 4xx error object, or a 200 whose content fits the request."""
    if response.status_code >= 500:
        pytest.fail(f"{response.status_code} for {path} {body!r}: {response.text}\n{server_log}")
    if response.status_code != 200:
        assert response.status_code in ERROR_STATUSES, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        chunks = _events(response.text)
        errors = [chunk for chunk in chunks if "error" in chunk]
        assert not errors, (path, body, errors)
        choices = [choice for chunk in chunks for choice in chunk["choices"]]
        finished = sorted(choice["index"] for choice in choices if choice["finish_reason"])
        # Each choice ends exactly once.
        assert finished == list(range(_expected_choices(path, body))), (body, finished)
        return
    answer = response.json()
    if path in ("/v1/completions", "/v1/chat/completions"):
        assert len(answer["choices"]) == _expected_choices(path, body), (body, answer)
        for choice in answer["choices"]:
            assert choice["finish_reason"] in ("stop", "length", "tool_calls"), (body, choice)
    elif path == "/tokenize":
        assert answer["count"] == len(answer["tokens"])
    elif path == "/detokenize":
        assert isinstance(answer["prompt"], str)


def _post(http: httpx.Client, server, tally, path: str, body: Any) -> None:
    content = strategies.to_json(body).encode()
    response = http.post(path, content=content, headers={"Content-Type": "application/json"})
    tally.count("strategies", f"POST {path}", response.status_code)
    try:
        parsed = json.loads(content)
    except ValueError:  # NaN, 1e400 and the like: the client's body as drawn
        parsed = body
    log = server.log() if response.status_code >= 500 else ""
    check_answer(path, parsed, response, log)


def _fuzz(examples: int):
    return settings(
        max_examples=num_examples(examples),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


@_fuzz(60)
@given(body=strategies.completion_bodies())
def test_completions(http, fuzz_server, fuzz_tally, body):
    _post(http, fuzz_server, fuzz_tally, "/v1/completions", body)


@_fuzz(40)
@given(body=strategies.chat_bodies())
def test_chat_completions(http, fuzz_server, fuzz_tally, body):
    _post(http, fuzz_server, fuzz_tally, "/v1/chat/completions", body)


@_fuzz(30)
@given(body=strategies.tokenize_bodies)
def test_tokenize(http, fuzz_server, fuzz_tally, body):
    _post(http, fuzz_server, fuzz_tally, "/tokenize", body)


@_fuzz(30)
@given(body=strategies.detokenize_bodies)
def test_detokenize(http, fuzz_server, fuzz_tally, body):
    _post(http, fuzz_server, fuzz_tally, "/detokenize", body)


@_fuzz(20)
@given(raw=strategies.raw_bodies)
def test_raw_bodies(http, fuzz_server, fuzz_tally, raw):
    response = http.post(
        "/v1/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    fuzz_tally.count("raw", "POST /v1/completions", response.status_code)
    if response.status_code not in ERROR_STATUSES | {200}:
        pytest.fail(
            f"{response.status_code} for {raw[:200]!r}: {response.text}\n{fuzz_server.log()}"
        )


def test_engine_alive_and_kv_intact_after_the_strategies(fuzz_server):
    assert_engine_alive_and_kv_intact(fuzz_server)
