"""A live estimate of what one engine step costs (torch-free):
T = fixed + per_row_token * draft_tokens + per_prefill_token * prefill_tokens
    + per_verify_request * verifying_requests + per_request * requests,
fitted online to the steps actually run. Each request's first token of a short chunk (one the
executor runs as decode rows) is counted with the request, its drafts are the row tokens the
fit prices, and every other token is a prefill token: those of long chunks, and the prompt
tails that short chunks carry beside their first token. Counted as row tokens, such tails
(prompts ending in the step after a prefill of the shared part, 11 tokens among 31 requests,
each step at 2-3x a decode step's cost) were all the row-token data a batch that drafted
little had, and priced a draft at 108-126 us where fixed-K steps showed 20 us. Requests are
those the step schedules: each costs its own bookkeeping (sampling, outputs, the scheduler's
books) beside its first row. Verifying requests are those whose drafts the step scores: each
costs its verification's bookkeeping (scheduling its drafts, building its rows, accepting and
rolling back) whatever its number of drafts. Fitted on all row tokens alone, 32 small-model
decodes a step showed their per-request costs as a per-row-token slope of about 30 us (the
forward's own: 4-9 us a row), so every draft looked as dear as a request.

Callers that do not count requests (num_requests 0) fit the row tokens' slope as before.

Both the engine (wall-clock step times) and the simulator (the cost model's virtual step times)
feed it, so the speculative controller decides the same way in both.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS
from corral.spec.nonnegative_fit import DeferredFit, nonnegative_solve

NUM_FEATURES = 4  # extra row tokens, prefill tokens, verifying requests, requests
# The weight of a step with prefill tokens against a decode step's: a prefill's cost varies with
# its prompts in ways the linear features miss (attention over the prompt, chunking), and at
# full weight the residuals of a fresh engine's first prefills set its per-request price
# (100-138 us at 32 requests, against 30-40 once decode steps dominate).
PREFILL_STEP_WEIGHT = 0.05
_MIN_SCALE = 1e-150  # below it the stored sums are multiplied out (StepCostEstimate._rescale)


def split_step(chunks: Iterable[tuple[int, int]]) -> tuple[int, int, int]:
    """(row tokens, prefill tokens, row requests) of a step's chunks, given as (tokens, of which
    drafts): a short chunk's first token and its drafts are row tokens, its other tokens (a
    prompt's tail) prefill tokens, as are all of a long chunk's."""
    rows = prefill = row_requests = 0
    for num_tokens, num_drafts in chunks:
        if 0 < num_tokens <= MAX_DECODE_ROW_TOKENS:
            row_requests += 1
            rows += 1 + num_drafts
            prefill += num_tokens - 1 - num_drafts
        else:
            prefill += num_tokens
    return rows, prefill, row_requests


class StepCostEstimate(DeferredFit):
    """Exponentially weighted least squares of step time on (extra row tokens, prefill tokens,
    verifying requests, requests) with an intercept, each slope at least zero. The two token
    slopes are ridge-regularised toward prior_per_token_fraction * the mean step, the two
    per-request slopes toward zero, each as if prior_weight observations prior_spread_tokens
    apart had shown it: until steps of different sizes have been seen, a step is assumed to
    double in cost every 1 / prior_per_token_fraction tokens and requests to cost nothing
    beside their tokens; once they have, the data decide."""

    def __init__(
        self,
        *,
        decay: float = 0.995,
        prior_per_token_fraction: float = 1 / 64,
        prior_weight: float = 0.5,
        prior_spread_tokens: float = 4.0,
    ) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        super().__init__()
        self.decay = decay
        self.prior_per_token_fraction = prior_per_token_fraction
        self.prior_weight = prior_weight
        self.prior_spread_tokens = prior_spread_tokens
        # Weighted sums: weight, x_i, x_i x_j (i <= j, row-major), t, x_i t, each stored divided
        # by _scale, the product of the decays so far: an observation then adds to its nonzero
        # features' sums only (a decode step without drafts: requests alone), where decaying
        # every sum in place cost most of a fold.
        self._scale = 1.0
        self._weight = 0.0
        self._sum_x = [0.0] * NUM_FEATURES
        self._sum_xx = [[0.0] * NUM_FEATURES for _ in range(NUM_FEATURES)]
        self._sum_t = 0.0
        self._sum_xt = [0.0] * NUM_FEATURES

    def observe(
        self,
        num_row_tokens: int,
        num_prefill_tokens: int,
        step_time_s: float,
        num_verify_requests: int = 0,
        num_requests: int = 0,
        num_row_requests: int = 0,
    ) -> None:
        """Record one step: its row and prefill tokens, how many requests verified drafts in
        it, how many it scheduled (num_row_requests of them in rows), and the time it took.
        Folded into the fit when it is next read (nonnegative_fit.PendingObservations)."""
        self._pending.append(
            (
                num_row_tokens,
                num_prefill_tokens,
                step_time_s,
                num_verify_requests,
                num_requests,
                num_row_requests,
            )
        )

    def _observe_now(
        self,
        num_row_tokens: int,
        num_prefill_tokens: int,
        step_time_s: float,
        num_verify_requests: int,
        num_requests: int,
        num_row_requests: int,
    ) -> None:
        if num_row_tokens + num_prefill_tokens <= 0 or step_time_s <= 0:
            return
        x = (
            float(num_row_tokens - num_row_requests),
            float(num_prefill_tokens),
            float(num_verify_requests),
            float(num_requests),
        )
        self._scale *= self.decay
        if self._scale < _MIN_SCALE:
            self._rescale()
        g = 1.0 / self._scale
        if num_prefill_tokens:
            g *= PREFILL_STEP_WEIGHT
        t = step_time_s
        self._weight += g
        self._sum_t += t * g
        nonzero = [(i, value * g) for i, value in enumerate(x) if value]
        for i, xg in nonzero:
            self._sum_x[i] += xg
            self._sum_xt[i] += xg * t
            row = self._sum_xx[i]
            for j, _ in nonzero:
                if j >= i:
                    row[j] += xg * x[j]
        self._counted()

    def _rescale(self) -> None:
        """Multiply the stored sums out by _scale and start it again at 1."""
        scale = self._scale
        self._weight *= scale
        self._sum_t *= scale
        for i in range(NUM_FEATURES):
            self._sum_x[i] *= scale
            self._sum_xt[i] *= scale
            row = self._sum_xx[i]
            for j in range(i, NUM_FEATURES):
                row[j] *= scale
        self._scale = 1.0

    @property
    def is_ready(self) -> bool:
        return self.num_observations > 0

    def coefficients(self) -> tuple[float, float, float]:
        """(fixed_s, per_row_token_s, per_prefill_token_s), all >= 0 (solved again as
        nonnegative_fit.refit_due says); per_row_token_s
        is an extra row token's (a draft's) where requests are counted."""
        fixed_s, per_row_token_s, per_prefill_token_s = self._coefficients()[:3]
        return fixed_s, per_row_token_s, per_prefill_token_s

    def per_verify_request_s(self) -> float:
        """Seconds a step spends on each request that verifies drafts, beyond its tokens."""
        return self._coefficients()[3]

    def per_request_s(self) -> float:
        """Seconds a step spends on each request it schedules, beyond its tokens."""
        return self._coefficients()[4]

    def _fit(self) -> tuple[float, ...]:
        """(fixed, per row token, per prefill token, per verifying request, per request)."""
        w = self._weight
        if w == 0:
            return (0.0,) * (NUM_FEATURES + 1)
        # Means and (co)variances are ratios of stored sums (_scale cancels); the ridge needs
        # the true weight.
        true_weight = w * self._scale
        n = NUM_FEATURES
        mean_x = [s / w for s in self._sum_x]
        mean_t = self._sum_t / w
        f = self.prior_per_token_fraction
        prior_token = f * mean_t / (1 + f * (mean_x[0] + mean_x[1]))
        priors = (prior_token, prior_token, 0.0, 0.0)
        lam = self.prior_weight * self.prior_spread_tokens**2 / true_weight
        # Centred normal equations plus the ridge: (V + lam I) slope = c + lam prior.
        a = [[0.0] * n for _ in range(n)]
        b = [0.0] * n
        for i in range(n):
            for j in range(i, n):
                a[i][j] = a[j][i] = self._sum_xx[i][j] / w - mean_x[i] * mean_x[j]
            a[i][i] = max(a[i][i], 0.0) + lam
            b[i] = self._sum_xt[i] / w - mean_x[i] * mean_t + lam * priors[i]
        slopes = nonnegative_solve(a, b)
        fixed = max(mean_t - sum(s * m for s, m in zip(slopes, mean_x)), 0.0)
        return (fixed, *slopes)
