"""The bundled default model, and builders for demo and test models."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

BUNDLED_MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_NAME = "corral-demo"
# Bump when the fallback model's recipe changes, so stale caches are not reused.
_FALLBACK_VERSION = "1"


def cache_dir() -> Path:
    return Path(os.environ.get("CORRAL_CACHE_DIR", Path.home() / ".cache" / "corral"))


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
    target = cache_dir() / f"random-tiny-llama-v{_FALLBACK_VERSION}"
    if not (target / "config.json").is_file():
        _build_fallback(target)
    return target


# The fallback default model's shape (also the policy benchmarks' model): small enough to build
# and run in seconds on a CPU.
TINY_LLAMA_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def _fallback_corpus() -> list[str]:
    """Real text that ships with corral: its own source files."""
    package = Path(__file__).parent.parent
    return [path.read_text() for path in sorted(package.rglob("*.py"))]


def _build_fallback(target: Path) -> None:
    from corral.demo.bpe import train_byte_level_bpe
    from corral.demo.random_model import build_random_model

    logger.info("building the fallback default model (tiny, random weights) in %s", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        tokenizer = train_byte_level_bpe(_fallback_corpus(), vocab_size=2048)
        build_random_model(
            staging,
            seed=0,
            dtype="bfloat16",
            tokenizer=tokenizer,
            **TINY_LLAMA_SHAPE,
        )
        try:
            staging.rename(target)
        except OSError:  # another process built it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
