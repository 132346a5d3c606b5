"""The demo models: the bundled trained ones (corral-demo and its draft, in models/), their
corpus and training, and the tiny random fallback default model. Which model a config names is
resolved in corral.model.resolve."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_NAME = "corral-demo"
