"""Prompt features for length prediction: a few dense statistics (length in the predictor's
unit, characters, numbers, sentences, questions) and signed hashed word uni- and bigrams, plus,
optionally, embeddings from the served model (embeddings.py).

Hashing uses crc32, so features are the same in every process (Python's hash() is salted).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from corral.predict.embeddings import EmbeddingSource
from corral.predict.units import LengthUnit, words

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE = re.compile(r"[.!?]+(?:\s|$)")

FEATURE_SETS = ("length", "full")


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What to extract. "length": log prompt length alone (the baseline); "full": all dense
    statistics and num_hash_buckets hashed n-grams (orders 1..max_ngram)."""

    feature_set: str = "full"
    num_hash_buckets: int = 2048
    max_ngram: int = 2
    # A Hugging Face model directory whose mean hidden state is appended (embeddings.py).
    embedding_model: str | None = None

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"feature set {self.feature_set!r} is not one of {FEATURE_SETS}")
        if self.num_hash_buckets < 1 or self.max_ngram < 1:
            raise ValueError(
                f"num_hash_buckets ({self.num_hash_buckets}) and max_ngram ({self.max_ngram}) "
                "must be >= 1"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def num_dense(self) -> int:
        return 1 if self.feature_set == "length" else 6


def dense_features(text: str, unit: LengthUnit, config: FeatureConfig) -> list[float]:
    length = np.log1p(unit.count(text))
    if config.feature_set == "length":
        return [length]
    numbers = _NUMBER.findall(text)
    return [
        length,
        np.log1p(len(text)),
        np.log1p(len(numbers)),
        np.log1p(len(set(numbers))),
        np.log1p(len(_SENTENCE.findall(text))),
        float(text.count("?")),
    ]


def hashed_ngrams(text: str, config: FeatureConfig) -> dict[int, float]:
    """Signed counts of hashed n-grams, scaled to unit L2 norm."""
    tokens = words(text)
    counts: dict[int, float] = {}
    for order in range(1, config.max_ngram + 1):
        for start in range(len(tokens) - order + 1):
            gram = " ".join(tokens[start : start + order]).encode()
            code = zlib.crc32(gram)
            index = (code >> 1) % config.num_hash_buckets
            counts[index] = counts.get(index, 0.0) + (1.0 if code & 1 else -1.0)
    norm = float(np.sqrt(sum(v * v for v in counts.values()))) or 1.0
    return {index: value / norm for index, value in counts.items()}


class FeatureMatrix:
    """Rows of features: dense statistics (n, num_dense) and the hashed n-grams as sparse
    (row, column, value) triples, so that products cost O(non-zeros), not O(n * buckets)."""

    def __init__(
        self,
        dense: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        num_hashed: int,
    ) -> None:
        self.dense = dense.astype(np.float64)
        self.rows, self.cols, self.values = rows, cols, values.astype(np.float64)
        self.num_hashed = num_hashed

    @property
    def num_rows(self) -> int:
        return len(self.dense)

    @property
    def num_features(self) -> int:
        return self.dense.shape[1] + self.num_hashed

    def with_dense(self, dense: np.ndarray) -> FeatureMatrix:
        return FeatureMatrix(dense, self.rows, self.cols, self.values, self.num_hashed)

    def matvec(self, weights: np.ndarray) -> np.ndarray:
        """X @ weights for weights of shape (num_features,) or (num_features, k)."""
        num_dense = self.dense.shape[1]
        out = self.dense @ weights[:num_dense]
        hashed = weights[num_dense:]
        if weights.ndim == 1:
            return out + self._row_sums(hashed)
        for column, column_weights in enumerate(np.ascontiguousarray(hashed.T)):
            out[:, column] += self._row_sums(column_weights)
        return out

    def rmatvec(self, grads: np.ndarray) -> np.ndarray:
        """X.T @ grads for grads of shape (num_rows,) or (num_rows, k)."""
        dense_part = self.dense.T @ grads
        if grads.ndim == 1:
            return np.concatenate([dense_part, self._col_sums(grads)])
        hashed = [self._col_sums(column) for column in np.ascontiguousarray(grads.T)]
        return np.vstack([dense_part, np.stack(hashed, axis=1)])

    def _row_sums(self, hashed_weights: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, self.values * hashed_weights[self.cols], self.num_rows)

    def _col_sums(self, row_grads: np.ndarray) -> np.ndarray:
        return np.bincount(self.cols, self.values * row_grads[self.rows], self.num_hashed)

    def to_dense(self) -> np.ndarray:
        matrix = np.zeros((self.num_rows, self.num_features))
        matrix[:, : self.dense.shape[1]] = self.dense
        np.add.at(matrix, (self.rows, self.dense.shape[1] + self.cols), self.values)
        return matrix


def featurize(
    texts: Sequence[str],
    unit: LengthUnit,
    config: FeatureConfig,
    embedder: EmbeddingSource | None = None,
) -> FeatureMatrix:
    """The features of each text (dense statistics unscaled; see Standardizer), with the
    embedder's vectors appended to the dense part when one is given."""
    dense = np.array([dense_features(text, unit, config) for text in texts], dtype=np.float64)
    dense = dense.reshape(len(texts), config.num_dense)
    if embedder is not None and texts:
        dense = np.hstack([dense, embedder.embed(texts)])
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    num_hashed = 0
    if config.feature_set == "full":
        num_hashed = config.num_hash_buckets
        for row, text in enumerate(texts):
            for index, value in hashed_ngrams(text, config).items():
                rows.append(row)
                cols.append(index)
                values.append(value)
    return FeatureMatrix(
        dense,
        np.array(rows, dtype=np.int64),
        np.array(cols, dtype=np.int64),
        np.array(values, dtype=np.float64),
        num_hashed,
    )


class Standardizer:
    """Scales the dense columns to zero mean and unit variance (fitted on training data)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, features: FeatureMatrix) -> Standardizer:
        scale = features.dense.std(axis=0)
        return cls(features.dense.mean(axis=0), np.where(scale > 1e-6, scale, 1.0))

    def __call__(self, features: FeatureMatrix) -> FeatureMatrix:
        return features.with_dense((features.dense - self.mean) / self.scale)
