"""OpenAI request fields -> SamplingParams, each range checked under its OpenAI name so that the
message names the field, the value and the limit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral.sampling_params import MAX_LOGPROBS, OutputKind, SamplingParams
from corral.serve.errors import APIError, bad_request, from_validation_error
from corral.serve.protocol import ChatCompletionRequest, CompletionRequest

MAX_N = 128
MAX_STOP_STRINGS = 32
MAX_PROMPTS_PER_REQUEST = 256
MAX_CACHE_SALT_CHARS = 256
MAX_DEADLINE_S = 7 * 24 * 3600.0
_INT64 = 2**63

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


def _check_range(
    name: str, value: float | None, low: float, high: float, *, low_open: bool = False
) -> None:
    if value is None:
        return
    above_low = value > low if low_open else value >= low
    if not above_low or value > high:
        bracket = "(" if low_open else "["
        raise bad_request(f"{name} must be in {bracket}{low}, {high}], got {value}", name)


def _check_token_id(name: str, token_id: int, limits: ModelLimits) -> None:
    if not 0 <= token_id < limits.vocab_size:
        raise bad_request(
            f"{name} contains token id {token_id}, outside the vocabulary [0, {limits.vocab_size})",
            name,
        )


def _common_params(req: CompletionRequest | ChatCompletionRequest, limits: ModelLimits) -> dict:
    _check_range("n", req.n, 1, MAX_N)
    _check_range("temperature", req.temperature, 0.0, 2.0)
    _check_range("top_p", req.top_p, 0.0, 1.0, low_open=True)
    _check_range("min_p", req.min_p, 0.0, 1.0)
    _check_range("presence_penalty", req.presence_penalty, -2.0, 2.0)
    _check_range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)
    _check_range("repetition_penalty", req.repetition_penalty, 0.0, 2.0, low_open=True)
    _check_range("seed", req.seed, -_INT64, _INT64 - 1)
    _check_range("min_tokens", req.min_tokens, 0, limits.max_model_len)
    if req.top_k is not None and not (req.top_k == -1 or 0 <= req.top_k <= limits.vocab_size):
        raise bad_request(
            f"top_k must be -1 (off), 0 (off) or in [1, {limits.vocab_size}], got {req.top_k}",
            "top_k",
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise bad_request(f"stop has {len(stop)} strings; at most {MAX_STOP_STRINGS}", "stop")
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty, got ''", "stop")
    for token_id in req.stop_token_ids or []:
        _check_token_id("stop_token_ids", token_id, limits)
    logit_bias: dict[int, float] | None = None
    if req.logit_bias:
        logit_bias = {}
        for key, bias in req.logit_bias.items():
            try:
                token_id = int(key)
            except ValueError:
                raise bad_request(
                    f"logit_bias keys must be token ids, got {key!r}", "logit_bias"
                ) from None
            _check_token_id("logit_bias", token_id, limits)
            _check_range(f"logit_bias[{key}]", bias, -100.0, 100.0)
            logit_bias[token_id] = bias
    check_cache_salt(req.cache_salt)
    if req.deadline_s is not None:
        _check_range("deadline_s", req.deadline_s, 0.0, MAX_DEADLINE_S, low_open=True)
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
    if value is None:
        return
    if value < 1:
        raise bad_request(f"{name} must be >= 1, got {value}", name)
    if min_tokens > value:
        raise bad_request(f"min_tokens ({min_tokens}) must be <= {name} ({value})", "min_tokens")


def _build(params: dict[str, Any], limits: ModelLimits) -> SamplingParams:
    for name, value in limits.sampling_defaults.items():
        if params.get(name) is None:
            params[name] = value
    try:
        return SamplingParams(**params)
    except ValueError as error:  # a combination the checks above did not cover
        raise APIError(400, str(error)) from None


def completion_params(req: CompletionRequest, limits: ModelLimits) -> SamplingParams:
    """SamplingParams of a /v1/completions request (refuses suffix and best_of != n)."""
    if req.suffix is not None:
        raise bad_request(f"suffix is not supported (got {req.suffix!r})", "suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(
            f"best_of is only supported equal to n (got best_of={req.best_of}, n={req.n})",
            "best_of",
        )
    _check_range("logprobs", req.logprobs, 0, MAX_LOGPROBS)
    _check_range("prompt_logprobs", req.prompt_logprobs, 0, MAX_LOGPROBS)
    _check_max_tokens("max_tokens", req.max_tokens, req.min_tokens)
    params = _common_params(req, limits)
    prompt_logprobs = req.prompt_logprobs
    if req.echo and req.logprobs is not None and prompt_logprobs is None:
        prompt_logprobs = req.logprobs
    params.update(max_tokens=req.max_tokens, logprobs=req.logprobs, prompt_logprobs=prompt_logprobs)
    return _build(params, limits)


def chat_params(req: ChatCompletionRequest, limits: ModelLimits) -> SamplingParams:
    """SamplingParams of a /v1/chat/completions request (refuses tools and JSON modes)."""
    if req.tools:
        raise bad_request(f"tools are not supported (got {len(req.tools)} tools)", "tools")
    if req.tool_choice not in (None, "none", "auto"):
        raise bad_request(f"tool_choice {req.tool_choice!r} is not supported", "tool_choice")
    if req.response_format is not None and req.response_format.type != "text":
        raise bad_request(
            f"response_format type {req.response_format.type!r} is not supported (only 'text')",
            "response_format",
        )
    if not req.messages:
        raise bad_request("messages must hold at least one message, got []", "messages")
    _check_range("top_logprobs", req.top_logprobs, 0, MAX_LOGPROBS)
    if req.top_logprobs and not req.logprobs:
        raise bad_request(
            f"top_logprobs ({req.top_logprobs}) needs logprobs set to true", "top_logprobs"
        )
    _check_max_tokens("max_tokens", req.max_tokens, req.min_tokens)
    _check_max_tokens("max_completion_tokens", req.max_completion_tokens, req.min_tokens)
    params = _common_params(req, limits)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else None
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
    if not prompt:
        raise bad_request("prompt must not be empty, got []", "prompt")
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
            if not item:
                raise bad_request("a token-id prompt must not be empty, got []", "prompt")
            for token_id in item:
                _check_token_id("prompt", token_id, limits)
    return prompts


def check_cache_salt(cache_salt: str | None) -> None:
    """400 unless the salt is absent or 1 to MAX_CACHE_SALT_CHARS characters."""
    if cache_salt is not None and not 0 < len(cache_salt) <= MAX_CACHE_SALT_CHARS:
        raise bad_request(
            f"cache_salt must have 1 to {MAX_CACHE_SALT_CHARS} characters, got {len(cache_salt)}",
            "cache_salt",
        )
