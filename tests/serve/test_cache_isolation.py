"""Prefix-cache isolation by tenant: with --cache-isolation api-key one key's prompts never hit
another key's cached blocks (so no timing side channel), while each key still reuses its own;
usage reports the cached prompt tokens."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from corral.cli import main
from corral.serve.cache_isolation import tenant_cache_salt
from corral.serve.config import ServerConfig
from tests.serve.conftest import in_process_client

KEYS = ("tenant-a-key-000000", "tenant-b-key-111111")
PROMPT = list(range(3, 3 + 80))  # five full 16-token blocks


def _app(tiny_model, isolation: str) -> TestClient:
    config = ServerConfig(api_keys=KEYS, cache_isolation=isolation)
    return in_process_client(tiny_model, config, num_blocks=64)


def _cached_tokens(client: TestClient, key: str, **fields) -> int:
    body = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0, **fields}
    response = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_api_key_isolation_keeps_tenants_apart(tiny_model):
    with _app(tiny_model, "api-key") as client:
        assert _cached_tokens(client, KEYS[0]) == 0
        assert _cached_tokens(client, KEYS[0]) == 64  # its own blocks (never the last token)
        assert _cached_tokens(client, KEYS[1]) == 0  # the other tenant's blocks are invisible
        assert _cached_tokens(client, KEYS[1]) == 64
        # `user` does not cross the key boundary in api-key mode.
        assert _cached_tokens(client, KEYS[0], user="u1") == 64


def _streamed_usage(client: TestClient, route: str, body: dict) -> dict:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {KEYS[0]}"}
    with client.stream("POST", route, json=body, headers=headers) as response:
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    return json.loads(chunks[-1][6:])["usage"]


def test_streamed_usage_reports_cached_tokens_as_a_whole_answer_does(tiny_model):
    with _app(tiny_model, "none") as client:
        assert _cached_tokens(client, KEYS[0]) == 0
        completion = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}
        usage = _streamed_usage(client, "/v1/completions", completion)
        assert usage["prompt_tokens_details"] == {"cached_tokens": 64}
        chat = {"messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": 2}
        first = _streamed_usage(client, "/v1/chat/completions", chat)
        again = _streamed_usage(client, "/v1/chat/completions", chat)
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert again["prompt_tokens_details"]["cached_tokens"] > 0
        assert again["prompt_tokens_details"]["cached_tokens"] < again["prompt_tokens"]


def test_without_isolation_tenants_share_and_salts_still_separate(tiny_model):
    with _app(tiny_model, "none") as client:
        assert _cached_tokens(client, KEYS[0]) == 0
        assert _cached_tokens(client, KEYS[1]) == 64
        assert _cached_tokens(client, KEYS[1], cache_salt="s") == 0
        response = client.post(
            "/v1/completions",
            json={"prompt": "hi", "cache_salt": "x" * 300},
            headers={"Authorization": f"Bearer {KEYS[0]}"},
        )
        assert response.status_code == 400
        assert "cache_salt" in response.json()["error"]["message"]


def test_tenant_salt_derivation():
    assert tenant_cache_salt("none", "key-a", "u", "s") == "s"
    assert tenant_cache_salt("api-key", None, None, None) is None
    by_key = tenant_cache_salt("api-key", "key-a", "u1", None)
    assert by_key == tenant_cache_salt("api-key", "key-a", "u2", None)
    assert by_key != tenant_cache_salt("api-key", "key-b", "u1", None)
    assert by_key != tenant_cache_salt("api-key", "key-a", None, "s")
    assert tenant_cache_salt("user", "key-a", "u1", None) != tenant_cache_salt(
        "user", "key-a", "u2", None
    )
    # user mode: a (key, user) pair per namespace, so no key joins another key's users.
    assert tenant_cache_salt("user", "key-a", "u1", None) != tenant_cache_salt(
        "user", "key-b", "u1", None
    )
    assert tenant_cache_salt("user", None, "u1", None) != tenant_cache_salt(
        "user", "key-a", "u1", None
    )
    # Separators in user text cannot pass for another tenant's (user, salt) pair.
    assert tenant_cache_salt("user", None, "a\0b", "c") != tenant_cache_salt(
        "user", None, "a", "b\0c"
    )
    # Any string encodes, a lone surrogate included.
    assert tenant_cache_salt("user", "key-a", "\ud800", None).startswith("tenant-")
    with pytest.raises(ValueError, match="cache isolation"):
        tenant_cache_salt("tenant", "k", None, None)


def test_user_isolation_keeps_keys_apart_within_one_user_name(tiny_model):
    with _app(tiny_model, "user") as client:
        assert _cached_tokens(client, KEYS[0], user="alice") == 0
        assert _cached_tokens(client, KEYS[0], user="alice") == 64
        # Another key claiming the same user name does not join that namespace.
        assert _cached_tokens(client, KEYS[1], user="alice") == 0
        assert _cached_tokens(client, KEYS[0], user="bob") == 0


def test_api_key_isolation_without_keys_is_refused_at_start_up(capsys, monkeypatch):
    with pytest.raises(ValueError, match="'api-key' needs API keys"):
        ServerConfig(cache_isolation="api-key")
    ServerConfig(cache_isolation="api-key", api_keys=KEYS[:1])
    ServerConfig(cache_isolation="user")  # user names alone still namespace
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    # corral serve stops before starting the engine, with the reason and no traceback.
    assert main(["serve", "--model", "unused", "--cache-isolation", "api-key"]) == 2
    error = capsys.readouterr().err
    assert "'api-key' needs API keys" in error and "Traceback" not in error
