"""LengthPredictor: prompt text -> predicted output length, behind one interface for the three
kinds the survey distinguishes (exact-length regression, range/bucket classification, relative
ranking), each registered by name in LENGTH_PREDICTORS.

A predictor is saved as one small .npz file: its arrays plus a JSON "meta" entry (kind, unit,
feature config, hyper-parameters).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corral.predict.embeddings import EmbeddingSource
from corral.predict.features import (
    FeatureConfig,
    FeatureMatrix,
    Standardizer,
    featurize,
)
from corral.predict.units import LengthUnit, make_unit
from corral.registry import Registry

FORMAT_VERSION = 1


class LengthPredictor(ABC):
    """Fits on (prompt, output length) pairs; predicts lengths (and ranking scores) for prompts.

    Subclasses implement _fit(features, lengths, rng) and _scores(features), plus the arrays
    they need to be saved (_state / _load_state). Lengths are in the unit's tokens.
    """

    kind: str = ""

    def __init__(
        self, unit: str = "words", features: FeatureConfig | None = None, seed: int = 0
    ) -> None:
        self.unit_name = unit
        self.unit: LengthUnit = make_unit(unit)
        self.features = features or FeatureConfig()
        self.seed = seed
        self._standardize: Standardizer | None = None
        self._embedder: EmbeddingSource | None = None
        # Free-form training facts saved with the predictor (data, split, held-out metrics).
        self.info: dict[str, Any] = {}

    # ----- public ---------------------------------------------------------------------------

    def fit(self, prompts: Sequence[str], lengths: Sequence[float] | np.ndarray) -> LengthPredictor:
        """Train on prompts and their output lengths; deterministic for a given seed."""
        if len(prompts) != len(lengths) or len(prompts) < 2:
            raise ValueError(
                f"need >= 2 prompts with one length each, got {len(prompts)} prompts and "
                f"{len(lengths)} lengths"
            )
        matrix = featurize(prompts, self.unit, self.features, self._get_embedder())
        self._standardize = Standardizer.fit(matrix)
        targets = np.asarray(lengths, dtype=np.float64)
        if (targets < 0).any():
            raise ValueError("output lengths must be >= 0")
        self._fit(self._standardize(matrix), targets, np.random.default_rng(self.seed))
        return self

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """Predicted output lengths (float, >= 1) in the unit's tokens."""
        return np.maximum(self._lengths(self._features(prompts)), 1.0)

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Ranking scores: larger means a longer output is expected."""
        return self._scores(self._features(prompts))

    def predict_one(self, prompt: str) -> int:
        """One prompt's predicted output length, rounded."""
        return int(round(float(self.predict([prompt])[0])))

    def save(self, path: str | Path) -> Path:
        """Write the predictor to path (.npz)."""
        if self._standardize is None:
            raise ValueError("the predictor has not been fitted")
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "unit": self.unit_name,
            "features": self.features.to_dict(),
            "seed": self.seed,
            "params": self.params(),
            "info": self.info,
        }
        arrays = {
            "standardize_mean": self._standardize.mean,
            "standardize_scale": self._standardize.scale,
            **self._state(),
        }
        path = Path(path)
        with path.open("wb") as file:
            np.savez_compressed(file, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
        return path

    # ----- for subclasses -------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """Hyper-parameters passed back to the constructor on load."""
        return {}

    @abstractmethod
    def _fit(
        self, features: FeatureMatrix, lengths: np.ndarray, rng: np.random.Generator
    ) -> None: ...

    @abstractmethod
    def _scores(self, features: FeatureMatrix) -> np.ndarray: ...

    def _lengths(self, features: FeatureMatrix) -> np.ndarray:
        return self._scores(features)

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _load_state(self, arrays: dict[str, np.ndarray]) -> None: ...

    def _features(self, prompts: Sequence[str]) -> FeatureMatrix:
        if self._standardize is None:
            raise ValueError("the predictor has not been fitted")
        matrix = featurize(prompts, self.unit, self.features, self._get_embedder())
        return self._standardize(matrix)

    def _get_embedder(self) -> EmbeddingSource | None:
        if self.features.embedding_model is None:
            return None
        if self._embedder is None:
            from corral.predict.embeddings import HiddenStateEmbedder

            self._embedder = HiddenStateEmbedder(self.features.embedding_model)
        return self._embedder


LENGTH_PREDICTORS: Registry[LengthPredictor] = Registry("length predictor")


def load_predictor(path: str | Path) -> LengthPredictor:
    """Read a predictor saved by LengthPredictor.save. ValueError for a file of another kind or
    version; FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"length predictor file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except KeyError:
        raise ValueError(f"{path} is not a corral length predictor (no meta entry)") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has predictor format {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    cls = LENGTH_PREDICTORS.get(meta["kind"])
    predictor = cls(  # type: ignore[call-arg]
        unit=meta["unit"],
        features=FeatureConfig(**meta["features"]),
        seed=meta["seed"],
        **meta["params"],
    )
    predictor._standardize = Standardizer(
        arrays.pop("standardize_mean"), arrays.pop("standardize_scale")
    )
    predictor._load_state(arrays)
    predictor.info = meta.get("info", {})
    return predictor
