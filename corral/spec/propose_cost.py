"""What proposing costs (torch-free): propose_time = pass_s * num_passes + token_s * num_tokens,
fitted online. A draft model runs one forward pass per draft position over every request still
proposing (num_passes = the largest K); n-gram and suffix lookups cost per token and a fixed
amount per step (num_passes = 1)."""

from __future__ import annotations

# Samples after which a new one is clipped to this multiple of the prediction (one-off costs,
# such as a draft model prefilling a new prompt, are neither per pass nor per token).
WARMUP_SAMPLES = 8
CLIP_FACTOR = 3.0


class ProposeCostEstimate:
    """Exponentially weighted least squares on (passes, tokens) without intercept, with a small
    ridge so that collinear data (one request: passes == tokens) still gives an answer."""

    def __init__(self, decay: float = 0.98, ridge: float = 1e-3) -> None:
        self.decay = decay
        self.ridge = ridge
        self._pp = self._pt = self._tt = self._py = self._ty = 0.0
        self.num_observations = 0

    def observe(self, num_passes: int, num_tokens: int, propose_time_s: float) -> None:
        if num_passes <= 0 or num_tokens <= 0 or propose_time_s <= 0:
            return
        if self.num_observations >= WARMUP_SAMPLES:
            propose_time_s = min(
                propose_time_s, CLIP_FACTOR * self.predict_s(num_passes, num_tokens)
            )
        d = self.decay
        p, t = float(num_passes), float(num_tokens)
        self._pp = self._pp * d + p * p
        self._pt = self._pt * d + p * t
        self._tt = self._tt * d + t * t
        self._py = self._py * d + p * propose_time_s
        self._ty = self._ty * d + t * propose_time_s
        self.num_observations += 1

    def coefficients(self) -> tuple[float, float]:
        """(pass_s, token_s), both >= 0."""
        if self.num_observations == 0:
            return 0.0, 0.0
        # Ridge relative to each feature's own scale (units differ: passes vs tokens).
        a11 = self._pp * (1 + self.ridge)
        a22 = self._tt * (1 + self.ridge)
        a12 = self._pt
        det = a11 * a22 - a12 * a12
        pass_s = (self._py * a22 - self._ty * a12) / det
        token_s = (self._ty * a11 - self._py * a12) / det
        if pass_s < 0:
            return 0.0, max(self._ty / a22, 0.0)
        if token_s < 0:
            return max(self._py / a11, 0.0), 0.0
        return pass_s, token_s

    def predict_s(self, num_passes: int, num_tokens: int) -> float:
        pass_s, token_s = self.coefficients()
        return pass_s * num_passes + token_s * num_tokens
