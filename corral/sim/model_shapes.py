"""Model shapes for the roofline model, by name (values of the published config.json files).

Any Hugging Face model directory or config.json path works too (ModelArch.from_dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.demo.random_model import SMOLLM_135M_SHAPE
from corral.model.arch import ModelArch

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu"}

MODEL_SHAPES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": _LLAMA
    | dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    # meta-llama/Llama-3.1-8B
    "llama-3.1-8b": _LLAMA
    | dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    # meta-llama/Llama-3.1-70B
    "llama-3.1-70b": _LLAMA
    | dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    # Qwen/Qwen2.5-7B
    "qwen2.5-7b": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    | dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
    ),
    "smollm-135m": _LLAMA | SMOLLM_135M_SHAPE,
}


def load_model_shape(name_or_path: str) -> ModelArch:
    """A named shape, a model directory, or a config.json file."""
    if name_or_path in MODEL_SHAPES:
        return ModelArch.from_hf_config(MODEL_SHAPES[name_or_path])
    path = Path(name_or_path)
    if path.is_dir():
        return ModelArch.from_dir(path)
    if path.is_file():
        import json

        return ModelArch.from_hf_config(json.loads(path.read_text()))
    raise ValueError(
        f"unknown model {name_or_path!r}; known shapes: {', '.join(MODEL_SHAPES)} "
        "(or a model directory / config.json)"
    )
