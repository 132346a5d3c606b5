"""Output-length prediction (torch-free: numpy): three kinds behind one interface.

- regression: exact length (ridge on log length);
- bucket: range classification (softmax over length buckets);
- ranking: relative order (pairwise RankNet or listwise ListNet).

Features come from the prompt text (length, simple statistics, hashed word n-grams; optionally
hidden-state embeddings of the served model, see embeddings.py). `corral predictor train` fits one
on a JSONL of (prompt, output length) pairs and saves it as a small .npz; the engine loads it
with --length-predictor and sets Request.predicted_num_output_tokens at admission.
"""

from corral.predict import bucket, ranking, regression  # noqa: F401
from corral.predict.base import LENGTH_PREDICTORS, LengthPredictor, load_predictor
from corral.predict.features import FeatureConfig

__all__ = ["LENGTH_PREDICTORS", "FeatureConfig", "LengthPredictor", "load_predictor"]
