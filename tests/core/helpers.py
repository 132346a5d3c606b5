"""Builders shared by the control-plane tests (no torch)."""

from __future__ import annotations

import itertools

from corral.request import Request
from corral.sampling_params import SamplingParams

_ids = itertools.count()


def make_request(
    prompt_token_ids: list[int] | int,
    max_tokens: int = 4,
    *,
    request_id: str | None = None,
    max_model_len: int = 4096,
    arrival_time: float | None = None,
    **params: object,
) -> Request:
    if isinstance(prompt_token_ids, int):
        prompt_token_ids = list(range(1, prompt_token_ids + 1))
    return Request(
        request_id or f"r{next(_ids)}",
        prompt_token_ids,
        SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
        eos_token_ids=frozenset({0}),
        max_model_len=max_model_len,
        arrival_time=arrival_time if arrival_time is not None else float(next(_ids)),
    )
