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
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
_MOE_KINDS = ("mixtral", "qwen2_moe", "qwen3_moe")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")


class UnsupportedModelError(ValueError):
    """The model directory asks for an architecture or option corral does not implement."""


@dataclass(frozen=True, slots=True)
class ModelArch:
    """Everything about a decoder-only Llama-family model that the engine and the simulator use.

    Mixture-of-experts models (num_experts > 0) replace the MLP of their sparse layers (see
    is_moe_layer) by num_experts SwiGLU experts of moe_intermediate_size, of which each token uses
    num_experts_per_tok, plus, where shared_expert_intermediate_size > 0, a shared SwiGLU expert
    scaled by a sigmoid gate (Qwen2-MoE). Dense layers use intermediate_size.
    """

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
    # The layers that attend within sliding_window when only some do (Qwen-style hybrids with
    # layer_types or max_window_layers); None: every layer does (or none, without a window).
    windowed_layers: tuple[int, ...] | None = None
    dtype: str | None = None  # the checkpoint's own dtype, e.g. "bfloat16"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    qk_norm: bool = False  # RMSNorm over head_dim on every query and key head (Qwen3)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k routing weights to sum to 1
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # JSON round trips (profiles, reports) hand lists back.
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        if self.windowed_layers is not None:
            object.__setattr__(self, "windowed_layers", tuple(self.windowed_layers))

    @property
    def uniform_sliding_window(self) -> int | None:
        """The window every layer attends within (blocks behind it can go), else None."""
        return self.sliding_window if self.windowed_layers is None else None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0 and any(map(self.is_moe_layer, range(self.num_layers)))

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer `index` has experts (every decoder_sparse_step-th layer that is
        not in mlp_only_layers) or a dense MLP."""
        return (
            self.num_experts > 0
            and index not in self.mlp_only_layers
            and (index + 1) % self.decoder_sparse_step == 0
        )

    @property
    def num_moe_layers(self) -> int:
        return sum(map(self.is_moe_layer, range(self.num_layers)))

    def expert_params(self) -> int:
        """Parameters of one routed expert (gate, up and down projections)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied; every expert counted)."""
        return self._count_params(self.num_experts)

    def num_active_params(self) -> int:
        """Parameters one token computes with: num_params with num_experts_per_tok routed
        experts per MoE layer instead of all of them (the same as num_params for dense models)."""
        return self._count_params(self.num_experts_per_tok)

    def layer_num_params(self, index: int) -> int:
        """Parameters of decoder layer index (every expert counted), norms included."""
        return self._layer_params(self.is_moe_layer(index), self.num_experts)

    def _layer_params(self, moe: bool, experts_per_layer: int) -> int:
        h = self.hidden_size
        attention = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.qkv_bias:
            attention += self.q_size + 2 * self.kv_size
        if self.o_bias:
            attention += h
        if self.qk_norm:
            attention += 2 * self.head_dim
        if not moe:
            mlp = 3 * h * self.intermediate_size
            if self.mlp_bias:
                mlp += 2 * self.intermediate_size + h
        else:
            mlp = self.num_experts * h + experts_per_layer * self.expert_params()  # router too
            if self.shared_expert_intermediate_size:
                mlp += 3 * h * self.shared_expert_intermediate_size + h  # shared expert + gate
        return attention + 2 * h + mlp

    def _count_params(self, experts_per_layer: int) -> int:
        num_moe = self.num_moe_layers
        layers = num_moe * self._layer_params(True, experts_per_layer)
        layers += (self.num_layers - num_moe) * self._layer_params(False, experts_per_layer)
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return layers + embeddings + self.hidden_size

    @property
    def max_context_len(self) -> int:
        """The longest context the model serves: max_position_embeddings, stretched by dynamic
        NTK's factor, or by YaRN's over its original context when that reaches further."""
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("rope_type")
        if rope_type == "dynamic":
            return int(self.max_position_embeddings * float(scaling["factor"]))
        if rope_type == "yarn" and scaling.get("factor"):
            stretched = int(scaling["original_max_position_embeddings"] * float(scaling["factor"]))
            return max(self.max_position_embeddings, stretched)
        return self.max_position_embeddings

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
        attention_bias = bool(config.get("attention_bias", False))
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
            qkv_bias=(
                kind == "qwen2"
                or (kind == "qwen2_moe" and bool(config.get("qkv_bias", True)))
                or (kind in ("llama", "mistral", "qwen3", "qwen3_moe") and attention_bias)
            ),
            o_bias=kind in ("llama", "qwen3", "qwen3_moe") and attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            **_sliding_windows(config, kind),
            dtype=str(dtype) if dtype else None,
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos,
            qk_norm=kind in ("qwen3", "qwen3_moe"),
            **_moe_fields(config, kind),
        )


def _moe_fields(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """The experts' shape and routing rule: Mixtral renormalises its top-k weights and has
    experts in every layer; Qwen MoE models say both in their config."""
    if kind not in _MOE_KINDS:
        return {}
    num_experts = config.get("num_experts")
    if num_experts is None:  # Mixtral's name, and transformers 5's for Qwen3-MoE
        num_experts = config.get("num_local_experts", 8)
    fields: dict[str, Any] = dict(
        num_experts=int(num_experts),
        num_experts_per_tok=int(config.get("num_experts_per_tok", 2)),
        moe_intermediate_size=int(
            config["intermediate_size"] if kind == "mixtral" else config["moe_intermediate_size"]
        ),
        norm_topk_prob=kind == "mixtral" or bool(config.get("norm_topk_prob", False)),
    )
    if kind != "mixtral":
        fields["decoder_sparse_step"] = int(config.get("decoder_sparse_step") or 1)
        fields["mlp_only_layers"] = tuple(int(i) for i in config.get("mlp_only_layers") or ())
    if kind == "qwen2_moe":
        fields["shared_expert_intermediate_size"] = int(
            config.get("shared_expert_intermediate_size") or 0
        )
    if fields["num_experts"] and not 0 < fields["num_experts_per_tok"] <= fields["num_experts"]:
        raise UnsupportedModelError(
            f"num_experts_per_tok {fields['num_experts_per_tok']} is not in [1, num_experts]"
        )
    return fields


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
    if rope_type in ("linear", "dynamic") and params.get("factor") is None:
        raise UnsupportedModelError(f"{rope_type} rope scaling needs a factor")
    if rope_type in ("llama3", "yarn"):
        # transformers: a top-level original_max_position_embeddings (Phi-3 style) wins, else
        # the rope dict's own, else max_position_embeddings.
        original = config.get("original_max_position_embeddings")
        if original is None:
            original = params.get("original_max_position_embeddings")
        if original is None:
            original = config.get("max_position_embeddings", 2048)
        params["original_max_position_embeddings"] = int(original)
    return params


def _sliding_windows(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """sliding_window and windowed_layers (see ModelArch) as transformers reads them: per-layer
    `layer_types` when given; Qwen models window the layers from max_window_layers on, and only
    with use_sliding_window; other families window every layer."""
    window = config.get("sliding_window")
    num_layers = int(config["num_hidden_layers"])
    layer_types = config.get("layer_types")
    is_qwen = kind in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    if is_qwen and not config.get("use_sliding_window"):
        window = None
    if window is None:
        return dict(sliding_window=None)
    if layer_types:
        windowed = [i for i, kind_ in enumerate(layer_types) if kind_ == "sliding_attention"]
    elif is_qwen:
        windowed = list(range(int(config.get("max_window_layers", num_layers)), num_layers))
    else:
        windowed = list(range(num_layers))
    max_positions = int(config.get("max_position_embeddings", 2048))
    if not windowed or int(window) >= max_positions:
        return dict(sliding_window=None)
    if len(windowed) == num_layers:
        return dict(sliding_window=int(window))
    return dict(sliding_window=int(window), windowed_layers=tuple(windowed))


def _refuse_unsupported_options(config: dict[str, Any], architecture: str) -> None:
    if config.get("quantization_config"):
        from corral.model.prequantized_format import PrequantizedFormat  # GPTQ and AWQ, 4-bit

        try:
            PrequantizedFormat.from_config(config)
        except ValueError as error:
            raise UnsupportedModelError(str(error)) from error
        if config.get("num_local_experts") or config.get("num_experts"):
            raise UnsupportedModelError("pre-quantized mixture-of-experts checkpoints")
    hidden_act = config.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise UnsupportedModelError(f"hidden_act {hidden_act!r} is not supported (only silu)")
    layer_types = config.get("layer_types")
    unknown = set(layer_types or ()) - {"full_attention", "sliding_attention"}
    if unknown:
        raise UnsupportedModelError(
            f"per-layer attention types {sorted(unknown)} are not supported"
        )
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError("partial_rotary_factor != 1 is not supported")
    if architecture != "LlamaForCausalLM" and config.get("mlp_bias"):
        raise UnsupportedModelError(f"mlp_bias is not supported for {architecture}")
