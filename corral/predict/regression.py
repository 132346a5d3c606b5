"""Exact-length regression: ridge regression of log(1 + output length) on the prompt features
(closed form). Predicting the log makes the estimate a geometric mean, robust to the long tail
(as in the regression predictors of S3 and of Zheng et al.'s "response length perception")."""

from __future__ import annotations

from typing import Any

import numpy as np

from corral.predict.base import LENGTH_PREDICTORS, LengthPredictor
from corral.predict.features import FeatureMatrix


def ridge(features: np.ndarray, targets: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and intercept minimizing |Xw + b - y|^2 + l2 * n * |w|^2 (b not penalized)."""
    x = features
    mean_x, mean_y = x.mean(axis=0), targets.mean()
    centered = x - mean_x
    gram = centered.T @ centered + l2 * len(x) * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, centered.T @ (targets - mean_y))
    return weights, float(mean_y - mean_x @ weights)


@LENGTH_PREDICTORS.register("regression")
class RegressionPredictor(LengthPredictor):
    kind = "regression"

    def __init__(self, *args: Any, l2: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)
        self.weights = np.zeros(0)
        self.intercept = 0.0

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def _fit(self, features: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator) -> None:
        self.weights, self.intercept = ridge(features.to_dense(), np.log1p(lengths), self.l2)

    def _scores(self, features: FeatureMatrix) -> np.ndarray:
        return features.matvec(self.weights) + self.intercept

    def _lengths(self, features: FeatureMatrix) -> np.ndarray:
        return np.expm1(self._scores(features))

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "intercept": np.array([self.intercept])}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights = arrays["weights"]
        self.intercept = float(arrays["intercept"][0])
