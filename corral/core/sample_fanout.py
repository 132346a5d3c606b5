"""Sample fan-out: a request with n > 1 becomes n scheduler Requests (its samples).

One rule for the engine (InputProcessor.make_requests) and the simulator (SimInstance), so the
scheduler sees the same requests in both: sample i of a request with id R is "{i}_R" with seed
seed + i (when the request is seeded), every sample has sibling_group R (the scheduler lets one
of them compute the prompt's blocks for all: sibling_admission.py), only sample 0 scores the
prompt (prompt_logprobs), and stop_when_agreed stays with the parent (the frontend counts the
votes). With n == 1 the one Request keeps the request's id, parameters and no sibling group.
"""

from __future__ import annotations

from typing import Any

from corral.request import Request
from corral.sampling_params import SamplingParams


def sample_request_id(request_id: str, index: int, n: int) -> str:
    """The scheduler id of sample index of a request with n samples."""
    return request_id if n == 1 else f"{index}_{request_id}"


def sample_params(params: SamplingParams, index: int) -> SamplingParams:
    """The parameters of sample index of a request with parameters params (n > 1)."""
    seed = None if params.seed is None else params.seed + index
    prompt_logprobs = params.prompt_logprobs if index == 0 else None
    return params.clone(n=1, seed=seed, prompt_logprobs=prompt_logprobs, stop_when_agreed=None)


def check_fan_out(params: SamplingParams, fields: dict[str, Any]) -> None:
    """ValueError for what one request's samples cannot share: a session's next turn, a KV
    transfer (disaggregation, migration)."""
    if params.n == 1:
        return
    if fields.get("session_id") is not None:
        raise ValueError(f"session_id needs n == 1, got n = {params.n}")
    if fields.get("kv_transfer") is not None:
        raise ValueError(f"kv_transfer_params needs n 1, got n {params.n}")


def fan_out_samples(
    request_id: str,
    token_ids: list[int],
    params: SamplingParams,
    *,
    predicted_num_output_tokens: int | None = None,
    **request_fields: Any,
) -> list[Request]:
    """One Request per sample of a request (see the module docstring). request_fields are the
    Request keywords every sample shares (max_model_len, arrival_time, priority, ...); a sample
    is migratable only when n == 1. Raises ValueError as check_fan_out does."""
    n = params.n
    check_fan_out(params, request_fields)
    migratable = bool(request_fields.pop("migratable", False)) and n == 1
    samples = []
    for index in range(n):
        request = Request(
            sample_request_id(request_id, index, n),
            token_ids,
            params if n == 1 else sample_params(params, index),
            migratable=migratable,
            sibling_group=request_id if n > 1 else None,
            **request_fields,
        )
        request.predicted_num_output_tokens = predicted_num_output_tokens
        samples.append(request)
    return samples


def fan_out_request(request: Request) -> list[Request]:
    """The samples of a fresh Request built with parameters of n > 1 (the simulator's
    requests): the same prompt and fields; a Request of n == 1 is its own one sample."""
    if request.sampling_params.n == 1:
        return [request]
    return fan_out_samples(
        request.request_id,
        request.prompt_token_ids,
        request.sampling_params,
        predicted_num_output_tokens=request.predicted_num_output_tokens,
        eos_token_ids=request.eos_token_ids,
        # A Request keeps no max_model_len, only max_tokens, which this context reproduces.
        max_model_len=request.num_prompt_tokens + request.max_tokens,
        arrival_time=request.arrival_time,
        priority=request.priority,
        client_id=request.client_id,
        cache_salt=request.cache_salt,
        adapter_id=None if request.lora is not None else request.adapter_id,
        deadline_s=request.deadline_s,
        lora=request.lora,
        kv_transfer=request.kv_transfer,
        migratable=request.migratable,
        session_id=request.session_id,
        session_pause_s=request.session_pause_s,
    )
