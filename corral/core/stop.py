"""When a request finishes on a new token: stop token ids, EOS, max_tokens, the context length."""

from __future__ import annotations

from corral.request import Request, RequestStatus


def check_stop(request: Request, max_model_len: int) -> bool:
    """Set the request's finished status if its last token ends it. Returns True if it finished.

    Stop strings need text, so the engine's output processor checks them and finishes the
    request through the scheduler.
    """
    last_token_id = request.all_token_ids[-1]
    if (
        last_token_id in request.stop_token_id_set
        and request.num_output_tokens >= request.sampling_params.min_tokens
    ):
        request.status = RequestStatus.FINISHED_STOPPED
        if last_token_id not in request.eos_token_ids or last_token_id in (
            request.sampling_params.stop_token_ids
        ):
            request.stop_reason = last_token_id
        return True
    if request.num_output_tokens >= request.max_tokens or request.num_tokens >= max_model_len:
        request.status = RequestStatus.FINISHED_LENGTH
        return True
    return False
