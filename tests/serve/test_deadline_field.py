"""The `deadline_s` request field reaches the engine's requests (the edf policy's deadline) and
out-of-range values are refused with a message naming the field and the limit."""

from __future__ import annotations

from fastapi.testclient import TestClient

from corral.engine.async_llm import AsyncLLM
from corral.llm import engine_config_from_kwargs
from corral.serve.app import build_app
from corral.serve.config import ServerConfig


def test_deadline_reaches_the_engine_and_bad_values_are_refused(tiny_model):
    engine = AsyncLLM(
        engine_config_from_kwargs(
            model=str(tiny_model),
            dtype="float32",
            num_blocks=64,
            max_model_len=256,
            scheduling_policy="edf",
        ),
        multiprocess=False,
    )
    seen = []
    make_requests = engine.input_processor.make_requests

    def recording(*args, **kwargs):
        children = make_requests(*args, **kwargs)
        seen.extend(child.deadline_s for child in children)
        return children

    engine.input_processor.make_requests = recording
    with TestClient(build_app(engine, ServerConfig())) as client:
        body = {"prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0}
        ok = client.post("/v1/completions", json={**body, "deadline_s": 2.5})
        assert ok.status_code == 200, ok.text
        chat = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "deadline_s": 0.75,
            },
        )
        assert chat.status_code == 200, chat.text
        assert seen == [2.5, 0.75]
        for value in (0, -1.0, 1e9):
            bad = client.post("/v1/completions", json={**body, "deadline_s": value})
            assert bad.status_code == 400
            message = bad.json()["error"]["message"]
            assert "deadline_s" in message and str(value) in message
