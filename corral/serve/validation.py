"""OpenAI request fields -> SamplingParams. The static bounds are rules on the request models
(corral.serve.protocol); what is checked here depends on the served model (vocabulary size,
context length) or on several fields at once, and each message names the field, the value and
the limit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.sampling_params import OutputKind, SamplingParams
from corral.serve.errors import APIError, bad_request, from_validation_error
from corral.serve.protocol import (
    MAX_PROMPTS_PER_REQUEST,
    ChatCompletionRequest,
    CompletionRequest,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ModelLimits:
    vocab_size: int
    max_model_len: int
    # The model's generation_config.json sampling defaults, for fields a request leaves unset.
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


def parse_body(model: type[ModelT], data: Any) -> ModelT:
    """Validate a decoded JSON body; a 400 names the first bad field."""
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise from_validation_error(error) from None


def _check_token_id(name: str, token_id: int, limits: ModelLimits) -> None:
    if not 0 <= token_id < limits.vocab_size:
        raise bad_request(
            f"{name} contains token id {token_id}, outside the vocabulary [0, {limits.vocab_size})",
            name,
        )


def _common_params(req: CompletionRequest | ChatCompletionRequest, limits: ModelLimits) -> dict:
    if req.min_tokens > limits.max_model_len:
        raise bad_request(
            f"min_tokens must be in [0, {limits.max_model_len}] (the context length), "
            f"got {req.min_tokens}",
            "min_tokens",
        )
    if req.top_k is not None and req.top_k > limits.vocab_size:
        raise bad_request(
            f"top_k must be -1 (off), 0 (off) or in [1, {limits.vocab_size}], got {req.top_k}",
            "top_k",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    for token_id in req.stop_token_ids or []:
        _check_token_id("stop_token_ids", token_id, limits)
    logit_bias: dict[int, float] | None = None
    if req.logit_bias:
        logit_bias = {}
        for key, bias in req.logit_bias.items():
            token_id = int(key)
            _check_token_id("logit_bias", token_id, limits)
            logit_bias[token_id] = bias
    params: dict[str, Any] = dict(
        n=req.n,
        stop=stop,
        stop_token_ids=list(req.stop_token_ids or []),
        seed=req.seed,
        logit_bias=logit_bias,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        include_stop_str_in_output=req.include_stop_str_in_output,
        skip_special_tokens=req.skip_special_tokens,
        output_kind=OutputKind.DELTA if req.stream else OutputKind.FINAL_ONLY,
        stop_when_agreed=req.stop_when_agreed,
        answer_pattern=req.answer_pattern,
        rag_chunks=list(req.rag_chunks) if req.rag_chunks else None,
    )
    optional = dict(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
    )
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def _check_max_tokens(name: str, value: int | None, min_tokens: int) -> None:
    if value is not None and min_tokens > value:
        raise bad_request(f"min_tokens ({min_tokens}) must be <= {name} ({value})", "min_tokens")


def with_output_constraint(
    params: SamplingParams, constraint: Any, reasoning: Any
) -> SamplingParams:
    """params with a structured output constraint and reasoning block (400 for a combination
    that cannot work, such as ignore_eos with a grammar)."""
    if constraint is None and reasoning is None:
        return params
    # The fields SamplingParams refuses with a constraint, in the order it checks them.
    conflicting = [name for name in ("ignore_eos", "min_tokens") if getattr(params, name)]
    try:
        return params.clone(structured_output=constraint, reasoning=reasoning)
    except ValueError as error:
        param = conflicting[0] if constraint is not None and conflicting else None
        raise APIError(400, str(error), param=param) from None


def _build(params: dict[str, Any], limits: ModelLimits) -> SamplingParams:
    for name, value in limits.sampling_defaults.items():
        if params.get(name) is None:
            params[name] = value
    try:
        return SamplingParams(**params)
    except ValueError as error:  # a combination the checks above did not cover
        # SamplingParams' messages begin with the field they are about.
        first_word = str(error).split(" ", 1)[0]
        raise APIError(
            400, str(error), param=first_word if first_word in params else None
        ) from None


def completion_params(req: CompletionRequest, limits: ModelLimits) -> SamplingParams:
    """SamplingParams of a /v1/completions request (refuses suffix and best_of != n)."""
    if req.suffix is not None:
        raise bad_request(f"suffix is not supported (got {req.suffix!r})", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"best_of is only supported equal to n (got best_of={req.best_of}, n={req.n})",
            "best_of",
        )
    _check_max_tokens("max_tokens", req.max_tokens, req.min_tokens)
    params = _common_params(req, limits)
    prompt_logprobs = req.prompt_logprobs
    if req.echo and req.logprobs is not None and prompt_logprobs is None:
        prompt_logprobs = req.logprobs
    params.update(max_tokens=req.max_tokens, logprobs=req.logprobs, prompt_logprobs=prompt_logprobs)
    return _build(params, limits)


def chat_params(req: ChatCompletionRequest, limits: ModelLimits) -> SamplingParams:
    """SamplingParams of a /v1/chat/completions request, before its output constraint (see
    corral.serve.structured)."""
    if req.top_logprobs and not req.logprobs:
        raise bad_request(
            f"top_logprobs ({req.top_logprobs}) needs logprobs set to true", "top_logprobs"
        )
    _check_max_tokens("max_tokens", req.max_tokens, req.min_tokens)
    _check_max_tokens("max_completion_tokens", req.max_completion_tokens, req.min_tokens)
    params = _common_params(req, limits)
    max_tokens = req.max_completion_tokens
    if max_tokens is None:
        max_tokens = req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params.update(max_tokens=max_tokens, logprobs=logprobs)
    return _build(params, limits)


def completion_prompts(req: CompletionRequest, limits: ModelLimits) -> list[str | list[int]]:
    """The request's prompts as texts or token-id lists (one engine request each)."""
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        prompts: list[Any] = [prompt]
    else:
        prompts = list(prompt)
    if len(prompts) * req.n > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(
            f"{len(prompts)} prompts x n={req.n} exceed {MAX_PROMPTS_PER_REQUEST} "
            f"completions per request",
            "prompt",
        )
    for item in prompts:
        if isinstance(item, list):
            for token_id in item:
                _check_token_id("prompt", token_id, limits)
    return prompts
