"""Which model a config names (a local path, a bundled model's name, or None for the default
model) and the context length it is served with. corral never downloads weights."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from corral.config import ModelConfig
from corral.core.kv_window import resolve_kv_window
from corral.demo import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME
from corral.model.arch import ModelArch


class ResolvedModel(NamedTuple):
    model_dir: Path
    arch: ModelArch
    max_model_len: int


def resolve_model(config: ModelConfig, kv_window_policy: str | None = None) -> ResolvedModel:
    """The model's directory, its architecture, and the context length: the configured one,
    else the model's own (ModelArch.max_context_len: max_position_embeddings, stretched by
    dynamic-NTK or YaRN scaling); ValueError when the configured one exceeds the model's.

    With attention sinks (kv_window_policy, corral/core/kv_window.py) a sequence may outgrow
    the model's context: then the span one query attends to must fit it instead."""
    model_dir = resolve_model_dir(config.model)
    arch = ModelArch.from_dir(model_dir)
    limit = arch.max_context_len
    asked = config.max_model_len
    if kv_window_policy is not None and arch.windowed_layers is not None:
        raise ValueError(
            f"--kv-window-policy {kv_window_policy!r} is for full-attention models; layers "
            f"{list(arch.windowed_layers)} of this model attend within {arch.sliding_window} tokens"
        )
    window = resolve_kv_window(arch.uniform_sliding_window, kv_window_policy)
    if kv_window_policy is not None and window is not None:
        if (arch.rope_scaling or {}).get("rope_type") == "dynamic":
            raise ValueError(
                f"--kv-window-policy {kv_window_policy!r}: dynamic-NTK rope scaling rotates by "
                "the sequence length, which attention sinks keep out of the cache"
            )
        if window.span_tokens > limit:
            raise ValueError(
                f"--kv-window-policy {kv_window_policy!r}: the {window.span_tokens} tokens one "
                f"query attends to exceed the model's context length ({limit})"
            )
        return ResolvedModel(model_dir, arch, asked if asked is not None else limit)
    if asked is not None and asked > limit:
        what = "max_position_embeddings"
        if limit != arch.max_position_embeddings:
            what = "context length with its rope scaling"
        raise ValueError(f"max_model_len {asked} exceeds the model's {what} ({limit})")
    return ResolvedModel(model_dir, arch, asked if asked is not None else limit)


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
