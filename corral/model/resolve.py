"""Which model directory a config names: a local path, a bundled model's name, or None for the
default model. corral never downloads weights."""

from __future__ import annotations

from pathlib import Path

from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME


def resolve_model_dir(model: str | None) -> Path:
    """A model directory from a path, a bundled model's name, or None (the default model)."""
    if model is None:
        return default_model_dir()
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    bundled = BUNDLED_MODELS_DIR / model
    if bundled.is_dir():
        return bundled
    raise FileNotFoundError(
        f"model {model!r} is neither a local directory nor a bundled model "
        f"(corral never downloads weights; pass a Hugging Face model directory)"
    )


def default_model_dir() -> Path:
    """The trained demo model when bundled, else a tiny random Llama built once into the cache."""
    bundled = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
    if (bundled / "config.json").is_file():
        return bundled
    from corral.demo.fallback import fallback_model_dir

    return fallback_model_dir()
