"""Prefix-cache isolation by tenant: with --cache-isolation api-key one key's prompts never hit
another key's cached blocks (so no timing side channel), while each key still reuses its own;
usage reports the cached prompt tokens."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.cache_isolation import tenant_cache_salt
from corral.serve.config import ServerConfig

KEYS = ("tenant-a-key-000000", "tenant-b-key-111111")
PROMPT = list(range(3, 3 + 80))  # five full 16-token blocks


def _app(tiny_model, isolation: str) -> TestClient:
    engine = AsyncLLM(
        engine_config_from_kwargs(
            model=str(tiny_model), dtype="float32", num_blocks=64, max_model_len=256
        ),
        multiprocess=False,
    )
    return TestClient(build_app(engine, ServerConfig(api_keys=KEYS, cache_isolation=isolation)))


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
    with pytest.raises(ValueError, match="cache isolation"):
        tenant_cache_salt("tenant", "k", None, None)
