"""The frontend's queue bounds (--max-queued-requests, --max-queued-tokens): what could never
fit is refused (ValueError, a 400), what does not fit now is turned away (a 503 to retry)."""

from __future__ import annotations


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full; retry after retry_after_s."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def check_queue_bounds(
    num_children: int,
    num_prompt_tokens: int,
    *,
    max_queued_requests: int | None,
    max_queued_tokens: int | None,
    num_queued_requests: int,
    num_queued_tokens: int,
) -> None:
    """Refuse a request of num_children samples that could never fit the queue (ValueError) or
    does not fit it now (EngineOverloadedError)."""
    num_tokens = num_children * num_prompt_tokens
    limit, tokens_limit = max_queued_requests, max_queued_tokens
    if limit is not None and num_children > limit:
        raise ValueError(
            f"n = {num_children} samples exceed the server's queue bound of {limit} requests "
            f"(--max-queued-requests)"
        )
    if tokens_limit is not None and num_tokens > tokens_limit:
        raise ValueError(
            f"{num_children} x {num_prompt_tokens} prompt tokens exceed the server's queue "
            f"bound of {tokens_limit} tokens (--max-queued-tokens)"
        )
    if limit is not None and num_queued_requests + num_children > limit:
        raise EngineOverloadedError(
            f"the server is overloaded: {num_queued_requests} requests are waiting "
            f"(bound: {limit}); retry later"
        )
    if tokens_limit is not None and num_queued_tokens + num_tokens > tokens_limit:
        raise EngineOverloadedError(
            f"the server is overloaded: {num_queued_tokens} prompt tokens are waiting "
            f"(bound: {tokens_limit}); retry later"
        )
