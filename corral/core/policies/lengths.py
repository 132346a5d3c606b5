"""Predicted output lengths as the length-aware policies read them."""

from __future__ import annotations

from corral.request import Request


def predicted_output_tokens(request: Request) -> int:
    """The request's predicted output length in [1, max_tokens]; without a prediction, its
    max_tokens (so unpredicted requests sort after predicted short ones, FCFS among equals)."""
    predicted = request.predicted_num_output_tokens
    if predicted is None:
        return max(request.max_tokens, 1)
    return min(max(int(predicted), 1), max(request.max_tokens, 1))


def predicted_remaining_tokens(request: Request) -> int:
    """Output tokens the request is still expected to generate (>= 1).

    When a request has outlived its prediction, the prediction is doubled until it exceeds the
    tokens generated so far (capped at max_tokens): a long job that was predicted short loses
    its head start geometrically instead of staying at the front forever.
    """
    generated = request.num_output_tokens
    limit = max(request.max_tokens, 1)
    predicted = predicted_output_tokens(request)
    while predicted <= generated and predicted < limit:
        predicted = min(predicted * 2, limit)
    return max(predicted - generated, 1)
