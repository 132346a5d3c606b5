"""Suffix decoding proposer, torch-free (after Oliaro et al., "SuffixDecoding", as in Arctic
Inference): a suffix tree over each running request's prompt and output, and one over the outputs
of recently finished requests; each proposes what most often followed the longest match of the
request's last tokens, and the proposal expected to get more tokens accepted wins."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from corral.spec.candidates import NUM_TOKENS_SYNCED_PER_STEP
from corral.spec.proposer import PROPOSERS, Proposal, ProposalRequest, Proposer
from corral.spec.proposers.suffix_tree import SuffixTree


class _Running:
    """A running request's tree (one sequence, id 0: its verified tokens so far)."""

    __slots__ = ("tree", "num_prompt_tokens")

    def __init__(self, max_depth: int, num_prompt_tokens: int) -> None:
        self.tree = SuffixTree(max_depth)
        self.num_prompt_tokens = num_prompt_tokens


@PROPOSERS.register("suffix")
class SuffixProposer(Proposer):
    """Per request, a tree over its own tokens, fed incrementally (tokens only grow; a request
    whose tokens shrank is rebuilt); globally, a tree over the outputs of the last
    max_cached_requests finished requests (FIFO). A preempted request (forget with finished=False)
    loses its tree, rebuilt from its tokens on its next propose, and feeds nothing to the global
    tree. Proposals are chosen deterministically (probs None)."""

    name = "suffix"

    def __init__(
        self,
        *,
        max_depth: int = 24,
        min_token_prob: float = 0.1,
        max_cached_requests: int = 1000,
        use_global_tree: bool = True,
    ) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {max_depth}")
        if not 0.0 <= min_token_prob <= 1.0:
            raise ValueError(f"min_token_prob must be in [0, 1], got {min_token_prob}")
        if max_cached_requests < 0:
            raise ValueError(f"max_cached_requests must be >= 0, got {max_cached_requests}")
        self.max_depth = max_depth
        self.min_token_prob = min_token_prob
        self.max_cached_requests = max_cached_requests
        self.use_global_tree = use_global_tree
        self._running: dict[str, _Running] = {}
        self._global = SuffixTree(max_depth)
        # Keys of the finished outputs in the global tree, oldest first.
        self._cached_keys: deque[int] = deque()
        self._next_key = 0

    @property
    def num_cached_requests(self) -> int:
        """How many finished requests' outputs the global tree holds."""
        return len(self._cached_keys)

    def clear_history(self) -> None:
        """Drops every finished output from the global tree (running requests keep theirs)."""
        self._global = SuffixTree(self.max_depth)
        self._cached_keys.clear()

    @property
    def global_tree(self) -> SuffixTree:
        """The tree over finished outputs (read it, don't change it)."""
        return self._global

    def propose(self, requests: list[ProposalRequest]) -> dict[str, Proposal]:
        """Proposals per request id, from the request's own tree or the global one (the higher
        score: expected accepted tokens); requests with nothing to propose are left out."""
        proposals: dict[str, Proposal] = {}
        use_global = self.use_global_tree and not self._global.is_empty()
        self.catchup_time_s = 0.0
        for request in requests:
            token_ids = request.token_ids
            tree = self._feed(request)
            max_num_tokens = request.max_num_tokens
            if max_num_tokens <= 0:
                continue
            best = tree.speculate(token_ids, max_num_tokens, self.min_token_prob)
            if use_global:
                other = self._global.speculate(token_ids, max_num_tokens, self.min_token_prob)
                if other.score > best.score:  # ties: the request's own tree
                    best = other
            if best.token_ids:
                proposals[request.request_id] = Proposal(best.token_ids[:max_num_tokens])
        return proposals

    def _feed(self, request: ProposalRequest) -> SuffixTree:
        """The request's tree, holding all of request.token_ids."""
        token_ids = request.token_ids
        running = self._running.get(request.request_id)
        if running is None or running.tree.sequence_length(0) > len(token_ids):
            running = _Running(self.max_depth, request.num_prompt_tokens)
            self._running[request.request_id] = running
        running.num_prompt_tokens = request.num_prompt_tokens
        num_known = running.tree.sequence_length(0)
        synced_from = len(token_ids) - NUM_TOKENS_SYNCED_PER_STEP
        if synced_from > num_known:
            # Catch-up, as the controller counts it (candidates.catchup_tokens: all but the
            # last tokens, which a request syncs every step anyway): a prompt, or the tokens
            # since the request last proposed. Timed for the controller, which prices it per
            # token (1.3 ms for a 200-token prompt here).
            start = time.perf_counter()
            running.tree.append(0, token_ids[num_known:synced_from])
            self.add_catchup_time(start)
            num_known = synced_from
        if len(token_ids) > num_known:
            running.tree.append(0, token_ids[num_known:])
        return running.tree

    def forget(self, request_ids: Iterable[str], finished: bool) -> None:
        """Drops the requests' trees; a finished request's output (its tokens after the prompt,
        as of its last propose) goes into the global tree, evicting the oldest beyond
        max_cached_requests."""
        for request_id in request_ids:
            running = self._running.pop(request_id, None)
            if running is None or not finished or not self.use_global_tree:
                continue
            if self.max_cached_requests == 0 or not running.tree.num_sequences:
                continue
            output_ids = running.tree.sequence(0)[running.num_prompt_tokens :]
            if not output_ids:
                continue
            key = self._next_key
            self._next_key += 1
            self._global.append(key, output_ids)
            self._cached_keys.append(key)
            while len(self._cached_keys) > self.max_cached_requests:
                self._global.remove(self._cached_keys.popleft())
