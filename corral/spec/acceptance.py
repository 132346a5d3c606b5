"""Measured acceptance of speculative drafts (torch-free): per proposer and per request, and per
draft depth, each estimate shrunk toward a prior until rounds have been seen."""

from __future__ import annotations

from collections.abc import Iterable

# Acceptance assumed before a proposer has been measured, and how many trials it weighs as
# a prior for each request's own estimate.
PRIOR_ACCEPTANCE = 0.6
PRIOR_WEIGHT_TRIALS = 8.0


class _Acceptance:
    __slots__ = ("successes", "trials")

    def __init__(self) -> None:
        self.successes = 0.0
        self.trials = 0.0


class AcceptanceEstimate:
    """Verification rounds seen: the proposer's pooled acceptance, each request's own, and the
    chance that a round's first j drafts all stand."""

    def __init__(self) -> None:
        self._global = _Acceptance()
        # [j]: verification rounds that scored their draft at 0-based depth j (every draft
        # before it accepted), and those that accepted it.
        self._reached_depth: list[int] = []
        self._accepted_at_depth: list[int] = []
        self._per_request: dict[str, _Acceptance] = {}
        # The pooled acceptance as of the last depth_profile (depth_yields scales by it).
        self.global_alpha = PRIOR_ACCEPTANCE

    def record(self, request_id: str, num_draft_tokens: int, num_accepted: int) -> None:
        """A verification round of request_id: num_draft_tokens scored, num_accepted accepted."""
        reached, accepted = self._reached_depth, self._accepted_at_depth
        if len(reached) < num_draft_tokens:
            reached.extend([0] * (num_draft_tokens - len(reached)))
            accepted.extend([0] * (num_draft_tokens - len(accepted)))
        # Trials: every accepted token, and the rejected one after them if there was one.
        trials = min(num_accepted + 1, num_draft_tokens)
        for depth in range(trials):
            reached[depth] += 1
        for depth in range(num_accepted):
            accepted[depth] += 1
        for acceptance in (self._global, self._per_request.setdefault(request_id, _Acceptance())):
            acceptance.successes += num_accepted
            acceptance.trials += trials

    def forget(self, request_id: str) -> None:
        self._per_request.pop(request_id, None)

    def acceptance(self, request_id: str | None) -> float:
        """The request's estimated per-token acceptance, shrunk toward the proposer's."""
        prior = self._pooled()
        if request_id is None:
            return prior
        return _shrunk(self._per_request.get(request_id), prior)

    def _pooled(self) -> float:
        """The proposer's pooled acceptance, shrunk toward PRIOR_ACCEPTANCE."""
        return _shrunk(self._global, PRIOR_ACCEPTANCE)

    def depth_yields(
        self, request_id: str, max_depth: int, profile: list[float] | None = None
    ) -> list[float]:
        """Expected yield of the request's draft at each depth 1..max_depth: the proposer's
        measured chance that a round's first j drafts all stand (depth_profile), scaled by the
        request's acceptance relative to the proposer's, never rising with depth. Acceptance
        often rises with depth (a proposer that got the first tokens right is on the right
        track), which one geometric rate would miss."""
        return self.depth_yields_of([request_id], max_depth, profile)[request_id]

    def depth_yields_of(
        self, request_ids: Iterable[str], max_depth: int, profile: list[float] | None = None
    ) -> dict[str, list[float]]:
        """depth_yields of each request, the proposer's rate worked out once (a plan at 32
        requests asked for it 48 times, about a third of the plan's time)."""
        if profile is None:
            profile = self.depth_profile(max_depth)
        profile = profile[:max_depth]
        global_alpha = self.global_alpha
        prior = self._pooled()
        result = {}
        for request_id in request_ids:
            alpha = _shrunk(self._per_request.get(request_id), prior)
            scale = alpha / global_alpha if global_alpha > 0 else 1.0
            yields = []
            last = 1.0  # min(1, scale * p, last) with last never above 1
            for chance in profile:
                value = scale * chance
                if value < last:
                    last = value
                yields.append(last)
            result[request_id] = yields
        return result

    def depth_profile(self, max_depth: int) -> list[float]:
        """[j - 1]: the proposer's measured chance that a round's first j drafts all stand: the
        product over depths i <= j of the chance that draft i stands given that those before it
        did, each measured on the rounds that reached depth i and shrunk toward alpha (its
        pooled acceptance), so the prior is the geometric alpha^j. Chained conditional rates
        use every round that reached a depth; an unconditional rate per depth measured the deep
        depths on the few rounds drafted that deep, which a rule that rarely drafts deep picks
        unevenly (the demo draft model's depth 4 came out 0.09 under the adaptive rule where a
        fixed K = 6 measured 0.21)."""
        global_alpha = self.global_alpha = self.acceptance(None)
        profile = []
        chance = 1.0
        reached, accepted = self._reached_depth, self._accepted_at_depth
        for depth in range(max_depth):
            num_reached = reached[depth] if depth < len(reached) else 0
            num_accepted = accepted[depth] if depth < len(accepted) else 0
            chance *= (num_accepted + global_alpha * PRIOR_WEIGHT_TRIALS) / (
                num_reached + PRIOR_WEIGHT_TRIALS
            )
            profile.append(chance)
        return profile


def _shrunk(measured: _Acceptance | None, prior: float) -> float:
    """Measured acceptance shrunk toward prior as if PRIOR_WEIGHT_TRIALS trials had shown it
    (prior alone where nothing was measured)."""
    if measured is None:
        return prior
    return (measured.successes + prior * PRIOR_WEIGHT_TRIALS) / (
        measured.trials + PRIOR_WEIGHT_TRIALS
    )
