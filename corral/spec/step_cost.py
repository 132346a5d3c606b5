"""A live estimate of what one engine step costs (torch-free):
T = fixed + per_row_token * row_tokens + per_prefill_token * prefill_tokens, fitted online to
the steps actually run. Row tokens are those of short chunks, which the executor runs as decode
rows (decodes and verifications: what a draft token adds); prefill tokens are those of longer
chunks, which take other kernels and cost differently per token.

Both the engine (wall-clock step times) and the simulator (the cost model's virtual step times)
feed it, so the speculative controller decides the same way in both.
"""

from __future__ import annotations

from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS


def split_tokens(chunk_sizes: list[int] | tuple[int, ...]) -> tuple[int, int]:
    """(row tokens, prefill tokens) of a step's chunks."""
    rows = prefill = 0
    for num_tokens in chunk_sizes:
        if num_tokens <= MAX_DECODE_ROW_TOKENS:
            rows += num_tokens
        else:
            prefill += num_tokens
    return rows, prefill


class StepCostEstimate:
    """Exponentially weighted least squares of step time on (row tokens, prefill tokens) with
    an intercept. Both slopes are ridge-regularised toward prior_per_token_fraction * the mean
    step, as if prior_weight observations prior_spread_tokens apart had shown it: until steps of
    different sizes have been seen, a step is assumed to double in cost every
    1 / prior_per_token_fraction tokens; once they have, the data decide."""

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
        self.decay = decay
        self.prior_per_token_fraction = prior_per_token_fraction
        self.prior_weight = prior_weight
        self.prior_spread_tokens = prior_spread_tokens
        # Weighted sums: weight, x1, x2, x1^2, x1 x2, x2^2, t, x1 t, x2 t.
        self._sums = [0.0] * 9
        self.num_observations = 0
        self._cached: tuple[float, float, float] | None = None

    def observe(self, num_row_tokens: int, num_prefill_tokens: int, step_time_s: float) -> None:
        """Record one step: its row and prefill tokens and the time it took."""
        if num_row_tokens + num_prefill_tokens <= 0 or step_time_s <= 0:
            return
        x1, x2, t = float(num_row_tokens), float(num_prefill_tokens), step_time_s
        d = self.decay
        terms = (1.0, x1, x2, x1 * x1, x1 * x2, x2 * x2, t, x1 * t, x2 * t)
        self._sums = [s * d + term for s, term in zip(self._sums, terms)]
        self.num_observations += 1
        self._cached = None

    @property
    def is_ready(self) -> bool:
        return self.num_observations > 0

    def coefficients(self) -> tuple[float, float, float]:
        """The fitted coefficients (recomputed only after a new observation)."""
        if self._cached is None:
            self._cached = self._fit()
        return self._cached

    def _fit(self) -> tuple[float, float, float]:
        """(fixed_s, per_row_token_s, per_prefill_token_s), all >= 0."""
        w, s1, s2, s11, s12, s22, st, s1t, s2t = self._sums
        if w == 0:
            return 0.0, 0.0, 0.0
        m1, m2, mt = s1 / w, s2 / w, st / w
        # Centred second moments.
        v11 = s11 / w - m1 * m1
        v12 = s12 / w - m1 * m2
        v22 = s22 / w - m2 * m2
        c1 = s1t / w - m1 * mt
        c2 = s2t / w - m2 * mt
        f = self.prior_per_token_fraction
        prior = f * mt / (1 + f * (m1 + m2))
        lam = self.prior_weight * self.prior_spread_tokens**2 / w
        a11, a22 = max(v11, 0.0) + lam, max(v22, 0.0) + lam
        b1, b2 = c1 + lam * prior, c2 + lam * prior
        det = a11 * a22 - v12 * v12
        slope1 = (b1 * a22 - b2 * v12) / det
        slope2 = (b2 * a11 - b1 * v12) / det
        slope1, slope2 = max(slope1, 0.0), max(slope2, 0.0)
        fixed = max(mt - slope1 * m1 - slope2 * m2, 0.0)
        return fixed, slope1, slope2
