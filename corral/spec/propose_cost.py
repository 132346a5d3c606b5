"""What proposing costs (torch-free): propose_time = call_s + pass_s * num_passes + token_s *
num_tokens + catchup_s * num_catchup_tokens, fitted online. A draft model runs one forward pass
per draft position over every request still proposing (num_passes = the largest K), and first
catches up on the tokens it has not seen (a request's whole prompt when it starts proposing, the
tokens since its last proposal when it resumes); n-gram and suffix lookups cost per token and a
fixed amount per step (num_passes = 1), and their catch-up (indexing new tokens) next to
nothing. call_s is what a proposal costs whatever its size (syncing request states, building
inputs: 0.13-0.3 ms of the demo draft model's proposals, against 0.05 ms a pass); without it a
fit on one-draft proposals charged it to every pass and token, and deeper drafts looked as dear
as the first."""

from __future__ import annotations

from corral.spec.nonnegative_fit import DeferredFit, nonnegative_solve

# Samples after which a new one is clipped to this multiple of the prediction (noise, and costs
# the features miss).
WARMUP_SAMPLES = 8
CLIP_FACTOR = 3.0
NUM_FEATURES = 4  # call (1), passes, tokens, catch-up tokens
# Per timed catch-up, the decay of the sums behind the per-token catch-up price.
CATCHUP_DECAY = 0.9


class ProposeCostEstimate(DeferredFit):
    """Exponentially weighted least squares on (1, passes, tokens, catch-up tokens), with a
    small ridge relative to each feature's scale so that collinear data (one request: passes ==
    tokens) still gives an answer."""

    def __init__(self, decay: float = 0.98, ridge: float = 1e-3) -> None:
        super().__init__()
        self.decay = decay
        self.ridge = ridge
        # Weighted sums of x_i x_j (upper triangle, row-major) and x_i y.
        self._xx = [[0.0] * NUM_FEATURES for _ in range(NUM_FEATURES)]
        self._xy = [0.0] * NUM_FEATURES
        # Catch-up seconds per token where the proposer times its catch-up (observe): decayed
        # sums of timed seconds and of tokens, so that a catch-up weighs by its tokens.
        self._timed_catchup_s: float | None = None
        self._catchup_time_sum = 0.0
        self._catchup_token_sum = 0.0

    def observe(
        self,
        num_passes: int,
        num_tokens: int,
        propose_time_s: float,
        num_catchup_tokens: int = 0,
        catchup_time_s: float | None = None,
    ) -> None:
        """One proposal's time. catchup_time_s: the part of it the proposer timed as catch-up
        (a draft model's prefill of a prompt), priced per token directly (an EWMA) and taken
        out of the fit: a draft model is rarely asked for a proposal when the rule grants none,
        and a fit over the few probes, each mostly a prompt's prefill, was no fit at all.
        Folded into the fit when it is next read (nonnegative_fit.PendingObservations)."""
        self._pending.append(
            (num_passes, num_tokens, propose_time_s, num_catchup_tokens, catchup_time_s)
        )

    def _observe_now(
        self,
        num_passes: int,
        num_tokens: int,
        propose_time_s: float,
        num_catchup_tokens: int,
        catchup_time_s: float | None,
    ) -> None:
        if catchup_time_s is not None:
            if num_catchup_tokens > 0 and catchup_time_s > 0:
                # Weighted by tokens and clipped against the estimate: an EWMA of per-token
                # ratios took a 3-token catch-up with a garbage collection inside (the suffix
                # proposer's trees are many small objects) at face value, priced a token at
                # 217 us against 10-20, and the rule never proposed again.
                previous = self._timed_catchup_s
                if previous is not None:
                    catchup_time_s = min(
                        catchup_time_s, CLIP_FACTOR * previous * num_catchup_tokens
                    )
                d = CATCHUP_DECAY
                self._catchup_time_sum = self._catchup_time_sum * d + catchup_time_s
                self._catchup_token_sum = self._catchup_token_sum * d + num_catchup_tokens
                self._timed_catchup_s = self._catchup_time_sum / self._catchup_token_sum
            propose_time_s = max(propose_time_s - catchup_time_s, 0.0)
            num_catchup_tokens = 0
        if num_passes <= 0 or num_tokens <= 0 or propose_time_s <= 0:
            return
        features = (1.0, float(num_passes), float(num_tokens), float(num_catchup_tokens))
        if self._num_observations >= WARMUP_SAMPLES:
            # Against the fit last solved (a solve at each clip cost more than the rest of an
            # observation; the fit is solved again when read).
            if self._last_fit is None:
                self._coefficients()
            limit = CLIP_FACTOR * _predict_s(
                self._last_fit, num_passes, num_tokens, num_catchup_tokens
            )
            propose_time_s = min(propose_time_s, limit)
        d = self.decay
        for i in range(NUM_FEATURES):
            self._xy[i] = self._xy[i] * d + features[i] * propose_time_s
            for j in range(NUM_FEATURES):
                self._xx[i][j] = self._xx[i][j] * d + features[i] * features[j]
        self._counted()

    @property
    def timed_catchup_s(self) -> float | None:
        """Catch-up seconds per token, where the proposer times its catch-up (else None)."""
        self._pending.drain()
        return self._timed_catchup_s

    def coefficients(self) -> tuple[float, float, float]:
        """(pass_s, token_s, catchup_s) of the fit (solved again as nonnegative_fit.refit_due
        says); catchup_s as timed where the proposer times its catch-up."""
        _, pass_s, token_s, catchup_s = self._coefficients()
        if self._timed_catchup_s is not None:
            catchup_s = self._timed_catchup_s
        return pass_s, token_s, catchup_s

    @property
    def call_s(self) -> float:
        """The fitted cost of a proposal whatever its size."""
        return self._coefficients()[0]

    def _fit(self) -> tuple[float, float, float, float]:
        """(call_s, pass_s, token_s, catchup_s), all >= 0: ridge least squares over the
        features seen, a negative coefficient fixed at zero and the rest refitted
        (nonnegative_fit.py)."""
        if self._num_observations == 0:
            return 0.0, 0.0, 0.0, 0.0
        matrix = [
            [self._xx[i][j] * (1 + self.ridge if i == j else 1.0) for j in range(NUM_FEATURES)]
            for i in range(NUM_FEATURES)
        ]
        seen = [i for i in range(NUM_FEATURES) if self._xx[i][i] > 0]
        call_s, pass_s, token_s, catchup_s = nonnegative_solve(matrix, self._xy, seen)
        return call_s, pass_s, token_s, catchup_s

    def predict_s(self, num_passes: int, num_tokens: int, num_catchup_tokens: int = 0) -> float:
        return _predict_s(self._coefficients(), num_passes, num_tokens, num_catchup_tokens)


def _predict_s(
    coefficients: tuple[float, ...] | None,
    num_passes: int,
    num_tokens: int,
    num_catchup_tokens: int,
) -> float:
    assert coefficients is not None
    call_s, pass_s, token_s, catchup_s = coefficients
    return call_s + pass_s * num_passes + token_s * num_tokens + catchup_s * num_catchup_tokens
