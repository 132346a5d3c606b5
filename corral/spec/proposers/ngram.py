"""Prompt lookup (n-gram) proposer, torch-free: find the latest earlier occurrence of the last
n tokens in the request's own prompt and output, and propose what followed it."""

from __future__ import annotations

import time
from collections.abc import Iterable

from corral.spec.candidates import NUM_TOKENS_SYNCED_PER_STEP
from corral.spec.proposer import PROPOSERS, Proposal, ProposalRequest, Proposer


class _NgramIndex:
    """For one request: n-gram -> the end (exclusive) of its latest occurrence, for every n in
    [min_n, max_n]. Invariant: every occurrence ending at e <= num_indexed is in the index."""

    __slots__ = ("latest_end", "num_indexed")

    def __init__(self) -> None:
        self.latest_end: dict[tuple[int, ...], int] = {}
        self.num_indexed = 0

    def extend(self, token_ids: list[int], upto: int, min_n: int, max_n: int) -> None:
        latest_end = self.latest_end
        for end in range(self.num_indexed + 1, upto + 1):
            for n in range(min_n, min(max_n, end) + 1):
                latest_end[tuple(token_ids[end - n : end])] = end
        self.num_indexed = max(self.num_indexed, upto)


@PROPOSERS.register("ngram")
class NgramProposer(Proposer):
    """Tries the longest suffix first (max_n tokens down to min_n). The continuation after the
    latest match is proposed; when it runs into the end of the sequence the text between the match
    and the end is taken as a period and repeated (a loop or an edit repeating its input)."""

    name = "ngram"

    def __init__(self, min_n: int = 2, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"ngram sizes need 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self._indexes: dict[str, _NgramIndex] = {}

    def propose(self, requests: list[ProposalRequest]) -> dict[str, Proposal]:
        proposals: dict[str, Proposal] = {}
        self.catchup_time_s = 0.0
        for request in requests:
            if request.max_num_tokens <= 0:
                continue
            token_ids = request.token_ids
            index = self._indexes.get(request.request_id)
            if index is None:
                index = self._indexes[request.request_id] = _NgramIndex()
            length = len(token_ids)
            # Occurrences ending before the last token only: the suffix itself ends at length.
            # Indexing all but the tokens a request syncs every step is catch-up (a prompt, or
            # the tokens since it last proposed: 3-6 ms for 32 new 500-token requests), timed
            # for the controller; untimed, a fit of few proposals had priced it as a 1.3 ms call
            # and the rule stopped proposing at 32 requests.
            synced_from = length - 1 - NUM_TOKENS_SYNCED_PER_STEP
            if synced_from > index.num_indexed:
                start = time.perf_counter()
                index.extend(token_ids, synced_from, self.min_n, self.max_n)
                self.add_catchup_time(start)
            index.extend(token_ids, length - 1, self.min_n, self.max_n)
            for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
                end = index.latest_end.get(tuple(token_ids[length - n :]))
                if end is None:
                    continue
                period = length - end
                proposals[request.request_id] = Proposal(
                    [token_ids[end + i % period] for i in range(request.max_num_tokens)]
                )
                break
        return proposals

    def forget(self, request_ids: Iterable[str], finished: bool) -> None:
        if finished:
            for request_id in request_ids:
                self._indexes.pop(request_id, None)
