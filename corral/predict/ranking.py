"""Relative ranking: a linear score trained only to order prompts by output length, after
"Efficient LLM Scheduling by Learning to Rank" (Fu et al., 2024), which showed that a ranking
objective serves SJF-style schedulers better than exact lengths.

objective="pairwise" (RankNet): logistic loss on sampled pairs with different lengths.
objective="listwise" (ListNet, top-one): cross-entropy between the softmax of the scores and the
softmax of the log lengths over sampled lists.
Lengths come from quantile matching: a score at training rank q maps to the training length at
rank q, so predictions keep the score order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corral.predict.base import LENGTH_PREDICTORS, LengthPredictor
from corral.predict.features import FeatureMatrix
from corral.predict.optim import adam

OBJECTIVES = ("pairwise", "listwise")
_NUM_QUANTILES = 101


@LENGTH_PREDICTORS.register("ranking")
class RankingPredictor(LengthPredictor):
    kind = "ranking"

    def __init__(
        self,
        *args: Any,
        objective: str = "pairwise",
        num_pairs: int = 50_000,
        list_size: int = 16,
        l2: float = 1e-4,
        num_steps: int = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"ranking objective {objective!r} is not one of {OBJECTIVES}")
        if num_pairs < 1 or list_size < 2:
            raise ValueError(f"num_pairs ({num_pairs}) >= 1 and list_size ({list_size}) >= 2")
        self.objective = objective
        self.num_pairs = int(num_pairs)
        self.list_size = int(list_size)
        self.l2 = float(l2)
        self.num_steps = int(num_steps)
        self.weights = np.zeros(0)
        self.score_quantiles = np.zeros(0)
        self.length_quantiles = np.zeros(0)

    def params(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "num_pairs": self.num_pairs,
            "list_size": self.list_size,
            "l2": self.l2,
            "num_steps": self.num_steps,
        }

    def _fit(self, features: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator) -> None:
        x = features
        if self.objective == "pairwise":
            loss_and_grad = self._pairwise(x, lengths, rng)
        else:
            loss_and_grad = self._listwise(x, lengths, rng)
        self.weights, _ = adam(
            loss_and_grad, rng.normal(0, 1e-3, size=x.num_features), num_steps=self.num_steps
        )
        levels = np.linspace(0, 1, _NUM_QUANTILES)
        self.score_quantiles = np.quantile(x.matvec(self.weights), levels)
        self.length_quantiles = np.quantile(lengths, levels)

    def _pairwise(self, x: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator):  # type: ignore[no-untyped-def]
        first = rng.integers(0, x.num_rows, size=self.num_pairs)
        second = rng.integers(0, x.num_rows, size=self.num_pairs)
        keep = lengths[first] != lengths[second]
        first, second = first[keep], second[keep]
        sign = np.sign(lengths[first] - lengths[second])
        n = x.num_rows

        def loss_and_grad(weights: np.ndarray) -> tuple[float, np.ndarray]:
            scores = x.matvec(weights)
            margin = sign * (scores[first] - scores[second])
            loss = np.logaddexp(0.0, -margin).mean()
            # d loss / d margin = -sigmoid(-margin)
            coeff = -sign / (1.0 + np.exp(margin)) / len(margin)
            grad_scores = np.bincount(first, coeff, n) - np.bincount(second, coeff, n)
            grad = x.rmatvec(grad_scores) + 2 * self.l2 * weights
            return float(loss + self.l2 * weights @ weights), grad

        return loss_and_grad

    def _listwise(self, x: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator):  # type: ignore[no-untyped-def]
        num_lists = max(self.num_pairs // self.list_size, 1)
        lists = rng.integers(0, x.num_rows, size=(num_lists, self.list_size))
        log_lengths = np.log1p(lengths)[lists]
        target = np.exp(log_lengths - log_lengths.max(axis=1, keepdims=True))
        target /= target.sum(axis=1, keepdims=True)
        n = x.num_rows

        def loss_and_grad(weights: np.ndarray) -> tuple[float, np.ndarray]:
            scores = x.matvec(weights)[lists]
            shifted = scores - scores.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss = -(target * log_probs).sum(axis=1).mean()
            grad_lists = (np.exp(log_probs) - target) / num_lists
            grad_scores = np.bincount(lists.ravel(), grad_lists.ravel(), n)
            grad = x.rmatvec(grad_scores) + 2 * self.l2 * weights
            return float(loss + self.l2 * weights @ weights), grad

        return loss_and_grad

    def _scores(self, features: FeatureMatrix) -> np.ndarray:
        return features.matvec(self.weights)

    def _lengths(self, features: FeatureMatrix) -> np.ndarray:
        return np.interp(self._scores(features), self.score_quantiles, self.length_quantiles)

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "weights": self.weights,
            "score_quantiles": self.score_quantiles,
            "length_quantiles": self.length_quantiles,
        }

    def _load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights = arrays["weights"]
        self.score_quantiles = arrays["score_quantiles"]
        self.length_quantiles = arrays["length_quantiles"]
