"""Deterministic random-weight Llama-family models saved as Hugging Face directories.

Used by tests (tiny models checked against transformers), benchmarks (a SmolLM-135M-shaped model)
and as the fallback default model when no trained demo model is bundled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SmolLM-135M's shape (HuggingFaceTB/SmolLM-135M config.json), for benchmarks.
SMOLLM_135M_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)

# architecture name -> transformers class prefix (<prefix>Config, <prefix>ForCausalLM).
_FAMILIES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "mixtral": "Mixtral",
    "qwen2_moe": "Qwen2Moe",
    "qwen3_moe": "Qwen3Moe",
}


def build_random_model(
    out_dir: str | Path,
    *,
    architecture: str = "llama",
    seed: int = 0,
    dtype: str = "float32",
    initializer_range: float = 0.2,
    tokenizer: Any = None,
    **config_overrides: Any,
) -> Path:
    """Create config.json + model.safetensors (+ tokenizer files) for a random model.

    architecture is a key of _FAMILIES ("llama", "mixtral", "qwen3_moe", ...); config_overrides are
    Hugging Face config fields.
    """
    import torch
    import transformers

    classes = {
        name: (
            getattr(transformers, f"{prefix}Config"),
            getattr(transformers, f"{prefix}ForCausalLM"),
        )
        for name, prefix in _FAMILIES.items()
    }
    if architecture not in classes:
        raise ValueError(f"architecture {architecture!r} is not one of {sorted(classes)}")
    config_class, model_class = classes[architecture]
    settings: dict[str, Any] = dict(initializer_range=initializer_range)
    if tokenizer is not None:
        settings.update(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    settings.update(config_overrides)
    config = config_class(**settings)
    torch.manual_seed(seed)
    model = model_class(config).to(getattr(torch, dtype))
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
