"""A live estimate of what one engine step costs as a function of the tokens it computes
(torch-free): T(n) = fixed + per_token * n, fitted online to the steps actually run.

Both the engine (wall-clock step times) and the simulator (the cost model's virtual step times)
feed it, so the speculative controller decides the same way in both.
"""

from __future__ import annotations


class StepCostEstimate:
    """Exponentially weighted least squares of step time on scheduled tokens.

    The slope is ridge-regularised toward prior_per_token_fraction * fixed cost, as if
    prior_weight observations a spread of prior_spread_tokens apart had shown it: until steps of
    different sizes have been seen, a step is assumed to double in cost every
    1 / prior_per_token_fraction tokens; once they have, the data decide.
    """

    def __init__(
        self,
        *,
        decay: float = 0.995,
        prior_per_token_fraction: float = 1 / 64,
        prior_weight: float = 2.0,
        prior_spread_tokens: float = 8.0,
    ) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.prior_per_token_fraction = prior_per_token_fraction
        self.prior_weight = prior_weight
        self.prior_spread_tokens = prior_spread_tokens
        # Weighted sums over observations: weight, n, n^2, t, n*t.
        self._w = self._n = self._nn = self._t = self._nt = 0.0
        self.num_observations = 0

    def observe(self, num_tokens: int, step_time_s: float) -> None:
        """Record one step: num_tokens scheduled, step_time_s taken."""
        if num_tokens <= 0 or step_time_s <= 0:
            return
        d = self.decay
        self._w = self._w * d + 1.0
        self._n = self._n * d + num_tokens
        self._nn = self._nn * d + num_tokens * num_tokens
        self._t = self._t * d + step_time_s
        self._nt = self._nt * d + num_tokens * step_time_s
        self.num_observations += 1

    @property
    def is_ready(self) -> bool:
        return self.num_observations > 0

    def coefficients(self) -> tuple[float, float]:
        """(fixed_s, per_token_s), both >= 0."""
        if self._w == 0:
            return 0.0, 0.0
        mean_n = self._n / self._w
        mean_t = self._t / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        cov = self._nt / self._w - mean_n * mean_t
        # Prior slope from the mean step: t = fixed * (1 + f n)  =>  slope = f t / (1 + f n).
        f = self.prior_per_token_fraction
        prior_slope = f * mean_t / (1 + f * mean_n)
        lam = self.prior_weight * self.prior_spread_tokens**2 / self._w
        slope = (cov + lam * prior_slope) / (max(var_n, 0.0) + lam)
        slope = max(slope, 0.0)
        fixed = max(mean_t - slope * mean_n, 0.0)
        return fixed, slope

    def predict_s(self, num_tokens: int) -> float:
        fixed, slope = self.coefficients()
        return fixed + slope * num_tokens
