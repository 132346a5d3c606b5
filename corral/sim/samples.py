"""SampleGroups: a simulated instance's requests with n > 1, fanned out as the engine does.

A SimInstance hands a request with n > 1 to its scheduler as the engine's InputProcessor does,
as n samples sharing one sibling_group (corral/core/sample_fanout.py), so the scheduler shares
their prompt blocks (corral/core/sibling_admission.py) as it does in the engine. Above the
instance the request stays one request (the router routed it, the client waits for it): each
step's updates of its samples merge into one update under the request's id, carrying every
sample's new tokens (the samples' chunks of one step, as a stream interleaves them), finished
when the last sample finishes.
"""

from __future__ import annotations

from corral.core.messages import RequestUpdate
from corral.core.sample_fanout import fan_out_request
from corral.request import Request


class SampleGroups:
    """The samples in flight on one instance, by sample id, and their requests' progress."""

    def __init__(self) -> None:
        self._request_of: dict[str, str] = {}  # sample id -> its request's id
        self._num_unfinished: dict[str, int] = {}  # request id -> samples still running

    @property
    def num_requests(self) -> int:
        """Requests with n > 1 that have samples still running."""
        return len(self._num_unfinished)

    def fan_out(self, request: Request) -> list[Request]:
        """The scheduler requests of a request: itself (n == 1) or its n samples (tracked)."""
        samples = fan_out_request(request)
        if len(samples) > 1:
            for sample in samples:
                self._request_of[sample.request_id] = request.request_id
            self._num_unfinished[request.request_id] = len(samples)
        return samples

    def merge(self, updates: list[RequestUpdate]) -> list[RequestUpdate]:
        """One step's updates with those of samples merged per request (in the order of each
        request's first sample update); other updates pass unchanged."""
        if not self._request_of:
            return updates
        merged: list[RequestUpdate] = []
        of_request: dict[str, RequestUpdate] = {}
        for update in updates:
            request_id = self._request_of.get(update.request_id)
            if request_id is None:
                merged.append(update)
                continue
            into = of_request.get(request_id)
            if into is None:
                into = RequestUpdate(request_id, [], num_cached_tokens=update.num_cached_tokens)
                of_request[request_id] = into
                merged.append(into)
            into.new_token_ids.extend(update.new_token_ids)
            if update.finish_reason is not None:
                del self._request_of[update.request_id]
                self._num_unfinished[request_id] -= 1
                if not self._num_unfinished[request_id]:
                    del self._num_unfinished[request_id]
                    into.finish_reason = update.finish_reason
                    into.stop_reason = update.stop_reason
        return merged
