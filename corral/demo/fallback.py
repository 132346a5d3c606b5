"""The fallback default model: a tiny random-weight Llama with a tokenizer trained on corral's
own source, built once into the cache when the trained demo model is not bundled."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from corral.paths import cache_dir

logger = logging.getLogger(__name__)

# Bump when the fallback model's recipe changes, so stale caches are not reused.
FALLBACK_VERSION = "1"

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


def fallback_model_dir() -> Path:
    """The fallback model's directory, built on first use."""
    target = cache_dir() / f"random-tiny-llama-v{FALLBACK_VERSION}"
    if not (target / "config.json").is_file():
        _build_fallback(target)
    return target


def fallback_corpus() -> list[str]:
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
        tokenizer = train_byte_level_bpe(fallback_corpus(), vocab_size=2048)
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
