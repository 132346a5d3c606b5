"""ModelArch: the shape of a supported model, read from a Hugging Face config.json (torch-free).

The simulator's cost models read the same description, so nothing here imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The model directory asks for an architecture or option corral does not implement."""


@dataclass(frozen=True, slots=True)
class ModelArch:
    """Everything about a decoder-only Llama-family model that the engine and the simulator use."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    dtype: str | None = None  # the checkpoint's own dtype, e.g. "bfloat16"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attention = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.qkv_bias:
            attention += self.q_size + 2 * self.kv_size
        mlp = 3 * h * i
        layer = attention + mlp + 2 * h
        embeddings = v * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embeddings + h

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return 2 * self.num_layers * self.kv_size * dtype_bytes

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelArch:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json; is it a Hugging Face model?")
        config = json.loads(path.read_text())
        generation_path = Path(model_dir) / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
        return cls.from_hf_config(config, generation)

    @classmethod
    def from_hf_config(
        cls, config: dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ModelArch:
        """Validate a config.json dict and build the description, refusing what is unsupported."""
        architectures = config.get("architectures") or []
        model_type = config.get("model_type")
        architecture = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if architecture is None:
            by_type = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
            if architectures or model_type not in by_type:
                found = ", ".join(architectures) or f"model_type {model_type!r}"
                raise UnsupportedModelError(
                    f"architecture {found} is not supported; corral supports "
                    f"{', '.join(SUPPORTED_ARCHITECTURES)}"
                )
            architecture = by_type[model_type]
        _refuse_unsupported_options(config, architecture)
        num_heads = int(config["num_attention_heads"])
        hidden_size = int(config["hidden_size"])
        head_dim = config.get("head_dim") or hidden_size // num_heads
        rope = _rope_parameters(config)
        kind = SUPPORTED_ARCHITECTURES[architecture]
        eos = _token_ids((generation_config or {}).get("eos_token_id", config.get("eos_token_id")))
        dtype = config.get("dtype") or config.get("torch_dtype")
        return cls(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.pop("rope_theta", 10000.0)),
            rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=kind == "qwen2" or bool(config.get("attention_bias", False)),
            o_bias=kind == "llama" and bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            sliding_window=_sliding_window(config, kind),
            dtype=str(dtype) if dtype else None,
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos,
        )


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Merge transformers v4 (rope_theta + rope_scaling) and v5 (rope_parameters) spellings."""
    params = dict(config.get("rope_parameters") or {})
    if "rope_theta" in config:
        params.setdefault("rope_theta", config["rope_theta"])
    scaling = config.get("rope_scaling") or {}
    params.update({k: v for k, v in scaling.items() if k not in params})
    rope_type = params.pop("type", None) or params.get("rope_type") or "default"
    params["rope_type"] = rope_type
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"rope scaling type {rope_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return params


def _sliding_window(config: dict[str, Any], kind: str) -> int | None:
    window = config.get("sliding_window")
    if kind == "qwen2":
        if config.get("use_sliding_window"):
            raise UnsupportedModelError(
                "use_sliding_window=true (Qwen2 per-layer sliding windows from max_window_layers) "
                "is not supported yet"
            )
        return None
    if window is None:
        return None
    max_positions = int(config.get("max_position_embeddings", 2048))
    return int(window) if int(window) < max_positions else None


def _refuse_unsupported_options(config: dict[str, Any], architecture: str) -> None:
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "unknown")
        raise UnsupportedModelError(f"quantized checkpoints ({method}) are not supported yet")
    hidden_act = config.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise UnsupportedModelError(f"hidden_act {hidden_act!r} is not supported (only silu)")
    layer_types = config.get("layer_types")
    if layer_types and len(set(layer_types)) > 1:
        raise UnsupportedModelError(
            f"mixed per-layer attention types {sorted(set(layer_types))} are not supported yet"
        )
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError("partial_rotary_factor != 1 is not supported")
    if architecture != "LlamaForCausalLM" and config.get("mlp_bias"):
        raise UnsupportedModelError(f"mlp_bias is not supported for {architecture}")
