"""The model's generation_config.json defaults fill only what a request leaves unset."""

from __future__ import annotations

from corral.serve.protocol import ChatCompletionRequest, CompletionRequest
from corral.serve.validation import ModelLimits, chat_params, completion_params

LIMITS = ModelLimits(512, 256, {"repetition_penalty": 1.3, "temperature": 0.2, "max_tokens": 7})


def test_completion_defaults_fill_unset_fields_only():
    params = completion_params(CompletionRequest(model="m", prompt="hi", max_tokens=None), LIMITS)
    assert (params.repetition_penalty, params.temperature, params.max_tokens) == (1.3, 0.2, 7)
    explicit = completion_params(
        CompletionRequest(
            model="m", prompt="hi", repetition_penalty=1.0, temperature=0.0, max_tokens=3
        ),
        LIMITS,
    )
    assert (explicit.repetition_penalty, explicit.temperature, explicit.max_tokens) == (1.0, 0, 3)


def test_chat_defaults():
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    params = chat_params(request, LIMITS)
    assert params.repetition_penalty == 1.3 and params.max_tokens == 7
    without = chat_params(request, ModelLimits(512, 256))
    assert without.repetition_penalty == 1.0 and without.max_tokens is None
