"""SampleGroups: a simulated instance's requests with n > 1, fanned out as the engine does.

A SimInstance hands a request with n > 1 to its scheduler as the engine's InputProcessor does,
as n samples sharing one sibling_group (corral/core/sample_fanout.py), so the scheduler shares
their prompt blocks (corral/core/sibling_admission.py) as it does in the engine. Above the
instance the request stays one request (the router routed it, the client waits for it): each
step's updates of its samples merge into one update under the request's id, carrying every
sample's new tokens (the samples' chunks of one step, as a stream interleaves them), finished
when the last sample finishes. With voting (corral/sim/voting.py, stop_when_agreed), the
samples still generating are stopped once k finished ones agree, and the request finishes with
stop_reason "agreed", as in the engine.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.core.messages import RequestUpdate
from corral.core.sample_fanout import fan_out_request
from corral.engine.consensus import AGREED
from corral.request import Request
from corral.sim.voting import Ballots


class SampleGroups:
    """The samples in flight on one instance, by sample id, and their requests' progress."""

    def __init__(
        self,
        ballots: Ballots | None = None,
        stop_samples: Callable[[list[str]], object] | None = None,
    ) -> None:
        self._request_of: dict[str, str] = {}  # sample id -> its request's id
        self._num_unfinished: dict[str, int] = {}  # request id -> samples still running
        # Voting (None: off): the finished samples' answers, and how to stop the others.
        self.ballots = ballots
        self._stop_samples = stop_samples

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
                if self.ballots is not None:
                    sample.max_tokens = self.ballots.sample_length(sample.max_tokens)
            self._num_unfinished[request.request_id] = len(samples)
        return samples

    def merge(self, updates: list[RequestUpdate]) -> list[RequestUpdate]:
        """One step's updates with those of samples merged per request (in the order of each
        request's first sample update); other updates pass unchanged."""
        if not self._request_of:
            return updates
        merged: list[RequestUpdate] = []
        of_request: dict[str, RequestUpdate] = {}
        agreed: list[str] = []
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
                    if self.ballots is not None:
                        self.ballots.forget(request_id)
                elif self.ballots is not None and self.ballots.cast(request_id):
                    agreed.append(request_id)
        for request_id in dict.fromkeys(agreed):
            self._stop_agreed(request_id, of_request[request_id])
        return merged

    def _stop_agreed(self, request_id: str, into: RequestUpdate) -> None:
        """k finished samples agree: stop the request's others (running or queued)."""
        if request_id not in self._num_unfinished:
            return  # its last sample finished in the same step
        others = [sample for sample, owner in self._request_of.items() if owner == request_id]
        assert self._stop_samples is not None
        self._stop_samples(others)
        for sample in others:
            del self._request_of[sample]
        del self._num_unfinished[request_id]
        into.finish_reason, into.stop_reason = "stop", AGREED
        self.ballots.forget(request_id)
