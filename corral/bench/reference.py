"""The reference setup of corral's published numbers: a random-weight model shaped like
SmolLM-135M, and the Azure LLM conversation trace (2023) scaled for a small machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.workloads import ArrivalOptions, WorkloadOptions


def _smollm_shaped(name: str, make_tokenizer: Any, cache: Path | None, **overrides: Any) -> Path:
    """A random-weight bf16 model of SmolLM-135M's shape (with overrides) under corral's cache,
    built once (tokenizer from make_tokenizer()) and reused."""
    from corral.demo.random_model import SMOLLM_135M_SHAPE, build_random_model
    from corral.paths import cache_dir

    target = (cache or cache_dir()) / name
    if not (target / "config.json").is_file():
        shape: dict[str, Any] = dict(SMOLLM_135M_SHAPE, **overrides)
        build_random_model(
            target,
            seed=0,
            dtype="bfloat16",
            initializer_range=0.02,
            tokenizer=make_tokenizer(),
            **shape,
        )
    return target


def smollm_shaped_model(cache: Path | None = None) -> Path:
    """A random-weight model shaped like SmolLM-135M (bf16 on disk), built once and reused.

    Its tokenizer is a 2048-token BPE trained on corral's own sources (ids above 2047 decode to
    nothing); the benchmarks send token ids and ignore EOS, so only the shapes matter."""

    def tokenizer() -> Any:
        from corral.demo.bpe import train_byte_level_bpe
        from corral.demo.fallback import fallback_corpus

        return train_byte_level_bpe(fallback_corpus(), vocab_size=2048)

    return _smollm_shaped("bench-smollm-135m-random", tokenizer, cache)


def smollm_shaped_text_model(cache: Path | None = None) -> Path:
    """The SmolLM-135M shape with the demo model's tokenizer (a 4096-token BPE trained on GSM8K,
    so real questions tokenize compactly) and a 4096-token context (SmolLM-135M has 2048), for
    benchmarks that send real text with long shared prefixes (8-shot GSM8K is about 1,300
    tokens). Random weights, bf16, built once and reused."""

    def tokenizer() -> Any:
        from transformers import PreTrainedTokenizerFast

        from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME

        demo = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
        return PreTrainedTokenizerFast.from_pretrained(str(demo), model_max_length=4096)

    return _smollm_shaped(
        "bench-smollm-135m-random-text", tokenizer, cache, max_position_embeddings=4096
    )


def azure_conv_options(
    num_requests: int,
    length_scale: float,
    max_model_len: int,
    *,
    vocab_size: int = 49152,
    arrival: ArrivalOptions | None = None,
    seed: int = 0,
) -> WorkloadOptions:
    """The first num_requests requests of the Azure conversation trace, lengths multiplied by
    length_scale (at least 1 token) and the prompt cut so prompt + output <= max_model_len."""
    return WorkloadOptions(
        dataset="azure-conv",
        num_requests=num_requests,
        length_scale=length_scale,
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        arrival=arrival,
        seed=seed,
    )
