"""Evaluation of length predictors: mean absolute error, bucket accuracy, Kendall's tau-b."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Lengths or scores: a list or a numpy array.
Values = Sequence[float] | np.ndarray


def mean_absolute_error(true: Values, predicted: Values) -> float:
    return float(np.mean(np.abs(np.asarray(true, float) - np.asarray(predicted, float))))


def bucket_accuracy(true: Values, predicted: Values, edges: Sequence[float]) -> float:
    """Share of predictions in the true bucket (bucket k: edges[k-1] <= x < edges[k])."""
    edges_array = np.asarray(edges, float)
    true_buckets = np.searchsorted(edges_array, np.asarray(true, float), side="right")
    predicted_buckets = np.searchsorted(edges_array, np.asarray(predicted, float), side="right")
    return float(np.mean(true_buckets == predicted_buckets))


def _count_swaps(values: list[float]) -> int:
    """Inversions in values (pairs i < j with values[i] > values[j]), by merge sort."""
    swaps = 0
    width = 1
    items = list(values)
    n = len(items)
    while width < n:
        merged: list[float] = []
        for start in range(0, n, 2 * width):
            left = items[start : start + width]
            right = items[start + width : start + 2 * width]
            i = j = 0
            while i < len(left) and j < len(right):
                if right[j] < left[i]:
                    merged.append(right[j])
                    swaps += len(left) - i
                    j += 1
                else:
                    merged.append(left[i])
                    i += 1
            merged += left[i:] + right[j:]
        items = merged
        width *= 2
    return swaps


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _joint_tied_pairs(x: np.ndarray, y: np.ndarray) -> int:
    _, counts = np.unique(np.stack([x, y], axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau(x: Values, y: Values) -> float:
    """Kendall's tau-b (ties in either sequence handled), in O(n log n) (Knight's method)."""
    x_array, y_array = np.asarray(x, float), np.asarray(y, float)
    n = len(x_array)
    if n != len(y_array) or n < 2:
        raise ValueError(
            f"kendall_tau needs two sequences of equal length >= 2, got {n}, {len(y_array)}"
        )
    order = np.lexsort((y_array, x_array))
    x_sorted, y_sorted = x_array[order], y_array[order]
    total = n * (n - 1) // 2
    ties_x = _tied_pairs(x_sorted)
    ties_y = _tied_pairs(y_sorted)
    ties_xy = _joint_tied_pairs(x_sorted, y_sorted)
    # With x sorted (ties broken by y), discordant pairs are the inversions of y.
    discordant = _count_swaps(y_sorted.tolist())
    concordant_minus_discordant = total - ties_x - ties_y + ties_xy - 2 * discordant
    denominator = np.sqrt(float(total - ties_x) * float(total - ties_y))
    return float(concordant_minus_discordant / denominator) if denominator else 0.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    num_samples: int
    mae: float
    bucket_accuracy: float
    kendall_tau: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate(
    true: Values,
    predicted: Values,
    scores: Values,
    edges: Sequence[float],
) -> Evaluation:
    """MAE and bucket accuracy of predicted lengths; Kendall's tau of scores against the truth."""
    return Evaluation(
        num_samples=len(true),
        mae=mean_absolute_error(true, predicted),
        bucket_accuracy=bucket_accuracy(true, predicted, edges),
        kendall_tau=kendall_tau(scores, true),
    )
