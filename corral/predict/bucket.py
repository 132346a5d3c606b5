"""Range classification: which length bucket the output falls in (softmax regression over the
prompt features), as in the bucket predictors of µ-Serve/SSJF and Magnus. Buckets are
equal-frequency ranges of the training lengths unless edges are given; the predicted length is
the training median of the most likely bucket, and the ranking score the expected log median."""

from __future__ import annotations

from typing import Any

import numpy as np

from corral.predict.base import LENGTH_PREDICTORS, LengthPredictor
from corral.predict.features import FeatureMatrix
from corral.predict.optim import adam


def quantile_edges(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """Inner bucket edges splitting lengths into num_buckets equal-frequency ranges."""
    inner = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return np.unique(inner)


def bucket_of(lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bucket index of each length: bucket k holds edges[k-1] <= length < edges[k]."""
    return np.searchsorted(edges, lengths, side="right")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@LENGTH_PREDICTORS.register("bucket")
class BucketPredictor(LengthPredictor):
    kind = "bucket"

    def __init__(
        self,
        *args: Any,
        num_buckets: int = 6,
        edges: list[float] | None = None,
        l2: float = 1e-4,
        num_steps: int = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if num_buckets < 2 and edges is None:
            raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
        self.num_buckets = int(num_buckets)
        self.fixed_edges = None if edges is None else sorted(float(e) for e in edges)
        self.l2 = float(l2)
        self.num_steps = int(num_steps)
        self.edges = np.zeros(0)
        self.medians = np.zeros(0)
        self.weights = np.zeros((0, 0))

    def params(self) -> dict[str, Any]:
        return {
            "num_buckets": self.num_buckets,
            "edges": self.fixed_edges,
            "l2": self.l2,
            "num_steps": self.num_steps,
        }

    def _fit(self, features: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator) -> None:
        if self.fixed_edges is not None:
            self.edges = np.asarray(self.fixed_edges)
        else:
            self.edges = quantile_edges(lengths, self.num_buckets)
        labels = bucket_of(lengths, self.edges)
        num_classes = len(self.edges) + 1
        self.medians = np.array(
            [
                np.median(lengths[labels == k]) if (labels == k).any() else np.nan
                for k in range(num_classes)
            ]
        )
        # Empty buckets (fixed edges) take their nearest filled neighbour's median.
        filled = np.flatnonzero(~np.isnan(self.medians))
        for k in np.flatnonzero(np.isnan(self.medians)):
            self.medians[k] = self.medians[filled[np.argmin(np.abs(filled - k))]]
        onehot = np.eye(num_classes)[labels]
        n = features.num_rows

        def loss_and_grad(weights: np.ndarray) -> tuple[float, np.ndarray]:
            # weights: (num_features + 1, num_classes), the last row the bias.
            probs = softmax(features.matvec(weights[:-1]) + weights[-1])
            loss = -np.log(probs[np.arange(n), labels] + 1e-12).mean()
            residual = (probs - onehot) / n
            grad = np.vstack([features.rmatvec(residual), residual.sum(axis=0)])
            grad += 2 * self.l2 * weights
            return float(loss + self.l2 * (weights * weights).sum()), grad

        initial = rng.normal(0, 1e-3, size=(features.num_features + 1, num_classes))
        self.weights, _ = adam(loss_and_grad, initial, num_steps=self.num_steps)

    def probabilities(self, features: FeatureMatrix) -> np.ndarray:
        return softmax(features.matvec(self.weights[:-1]) + self.weights[-1])

    def _scores(self, features: FeatureMatrix) -> np.ndarray:
        return self.probabilities(features) @ np.log1p(self.medians)

    def _lengths(self, features: FeatureMatrix) -> np.ndarray:
        return self.medians[self.probabilities(features).argmax(axis=1)]

    def _state(self) -> dict[str, np.ndarray]:
        return {"edges": self.edges, "medians": self.medians, "weights": self.weights}

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.edges, self.medians, self.weights = (
            arrays["edges"],
            arrays["medians"],
            arrays["weights"],
        )
