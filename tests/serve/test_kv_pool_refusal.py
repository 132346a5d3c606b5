"""Over HTTP, a request that can never fit the KV pool is a 400 naming the prompt tokens, the
pool's capacity and the flags that size it; the server keeps serving (issue 13, defect 1)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from corral.core.kv_capacity import POOL_SIZE_FLAGS
from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.config import ServerConfig


def test_a_prompt_larger_than_the_pool_is_a_400(tiny_model):
    config = engine_config_from_kwargs(
        model=str(tiny_model), dtype="float32", num_blocks=4, block_size=16, max_model_len=256
    )
    engine = AsyncLLM(config, multiprocess=False)
    with TestClient(build_app(engine, ServerConfig())) as client:
        body = {"prompt": list(range(10, 110)), "max_tokens": 4, "temperature": 0}
        refused = client.post("/v1/completions", json=body)
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert "100 tokens" in message and "64 tokens" in message and POOL_SIZE_FLAGS in message
        ok = client.post("/v1/completions", json={**body, "prompt": [5, 6, 7]})
        assert ok.status_code == 200
        assert ok.json()["choices"][0]["finish_reason"] == "length"
