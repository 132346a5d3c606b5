"""The Llama family (Llama 2/3, Mistral, Qwen2/3, and the Mixtral and Qwen MoE models): one
decoder with optional qkv/o/mlp biases, optional per-head q/k RMSNorm (Qwen3) and, in the sparse
layers of mixture-of-experts models, a SparseMoE block (corral/model/layers/moe.py) in place of
the dense MLP.

Weights are plain tensors, fused at load time: q|k|v into one matmul and gate|up into another.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from corral.lora.step import LoRAStep
from corral.model.arch import ModelArch
from corral.model.kernels import cpu_kernels
from corral.model.layer_loop import forward_layer_loop, layer_loop_weights
from corral.model.layers.attention import AttentionMetadata, LayerKVCache, paged_attention
from corral.model.layers.linear import linear, linear_silu_and_mul, rms_norm
from corral.model.layers.moe import SparseMoE
from corral.model.layers.rotary import RotaryEmbedding
from corral.model.quantization import Int8Weight

# CPU steps take the fused ops (and decode-only steps the C++ layer loop) at any size: with the
# elementwise kernels vectorized, a same-process A/B on the demo model's captured steps measured
# them 1.00-1.03x at 1-8 tokens, 1.46x at 32 decode rows, 1.22x at 64, and 1.04-1.28x on steps
# with prefill chunks up to 512 tokens against the unfused ops (the limit was 16 tokens).


class DecoderLayerWeights:
    __slots__ = (
        "input_norm",
        "qkv",
        "qkv_bias",
        "o",
        "o_bias",
        "post_norm",
        "gate_up",
        "gate_up_bias",
        "down",
        "down_bias",
        "q_norm",
        "k_norm",
        "moe",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)


# Hugging Face parameter names inside one decoder layer -> (fused weight, slot in the fusion).
_LAYER_PARTS = {
    "self_attn.q_proj": ("qkv", 0),
    "self_attn.k_proj": ("qkv", 1),
    "self_attn.v_proj": ("qkv", 2),
    "self_attn.o_proj": ("o", None),
    "self_attn.q_norm": ("q_norm", None),
    "self_attn.k_norm": ("k_norm", None),
    "mlp.gate_proj": ("gate_up", 0),
    "mlp.up_proj": ("gate_up", 1),
    "mlp.down_proj": ("down", None),
    "input_layernorm": ("input_norm", None),
    "post_attention_layernorm": ("post_norm", None),
}
_NUM_FUSED_PARTS = {"qkv": 3, "gate_up": 2}
# Where MoE checkpoints keep a sparse layer's block: Mixtral's name, then the Qwen models'.
_MOE_PREFIXES = ("block_sparse_moe.", "mlp.")


class LlamaFamilyModel:
    """A decoder-only transformer: embed, N x (attention + SwiGLU MLP), final norm, LM head."""

    def __init__(self, arch: ModelArch, dtype: torch.dtype, device: torch.device, max_len: int):
        self.arch = arch
        self.dtype = dtype
        self.device = device
        self.layers = [DecoderLayerWeights() for _ in range(arch.num_layers)]
        for index, layer in enumerate(self.layers):
            if arch.is_moe_layer(index):
                layer.moe = SparseMoE(
                    arch.num_experts,
                    arch.num_experts_per_tok,
                    arch.norm_topk_prob,
                    arch.shared_expert_intermediate_size > 0,
                )
        self.embed_tokens: torch.Tensor | None = None
        self.final_norm: torch.Tensor | None = None
        self.lm_head: torch.Tensor | None = None
        self.rotary = RotaryEmbedding(
            arch.head_dim,
            max_len,
            arch.rope_theta,
            arch.rope_scaling,
            dtype,
            device,
            arch.max_position_embeddings,
        )
        self.scale = arch.head_dim**-0.5
        self._neg_sin: torch.Tensor | None = None  # -rotary.sin, made on the first sink step
        # Per layer, its own window when only some layers have one (else the step's metadata
        # carries the model's window, or none).
        windowed = set(arch.windowed_layers or ())
        self.layer_windows = [
            arch.sliding_window if index in windowed else None for index in range(arch.num_layers)
        ]
        # Tensor parallelism (corral/model/tensor_parallel.py): the rule that slices each
        # checkpoint tensor at load, and the in-place sum of o's and down's partial outputs.
        self.shard = None
        self.all_reduce = None
        # Weight offloading (corral/model/weight_offload.py): the layers whose tensors load into
        # host memory (CUDA, offload to host), and the offload that brings them in to compute.
        self.host_layer_ids: frozenset[int] = frozenset()
        self.offload = None
        # Decode steps run the decoder stack in one C++ call where the model allows it
        # (corral/model/layer_loop.py); False keeps them on the per-layer Python path.
        self.use_layer_loop = True
        self._loop_weights: list[list[torch.Tensor | None]] | None = None  # [] when it cannot

    # ----- loading -------------------------------------------------------------------------

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take Hugging Face-named tensors, cast and fuse them; raise on missing or unknown ones."""
        pending: dict[tuple[int, str, str], list[torch.Tensor | None]] = {}
        unknown = []
        for name, tensor in named_tensors:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            if self.shard is not None:
                tensor = self.shard(name, tensor)
            tensor = tensor.to(device=self._device_for(name), dtype=self.dtype)  # Int8Weight too
            if name == "model.embed_tokens.weight":
                self.embed_tokens = tensor
            elif name == "model.norm.weight":
                self.final_norm = tensor
            elif name == "lm_head.weight":
                self.lm_head = tensor
            elif name.startswith("model.layers."):
                if not self._load_layer_part(name, tensor, pending):
                    unknown.append(name)
            else:
                unknown.append(name)
        if unknown:
            raise ValueError(f"unexpected weights in checkpoint: {', '.join(unknown[:5])}")
        for (index, target, kind), parts in pending.items():
            if any(part is None for part in parts):
                raise ValueError(f"layer {index}: incomplete {target} {kind}s in checkpoint")
            fused = (
                Int8Weight.cat(parts)  # type: ignore[arg-type]
                if isinstance(parts[0], Int8Weight)
                else torch.cat(parts, dim=0)  # type: ignore[arg-type]
            )
            setattr(self.layers[index], target + ("_bias" if kind == "bias" else ""), fused)
        if self.arch.tie_word_embeddings:
            self.lm_head = self.embed_tokens
        elif self.lm_head is None:
            raise ValueError(
                "checkpoint is missing weights: lm_head.weight (config.json has "
                "tie_word_embeddings false, so the output head is a tensor of its own, not the "
                "embeddings)"
            )
        self._check_complete()

    def _device_for(self, name: str) -> torch.device:
        offloaded = self.host_layer_ids and name.startswith("model.layers.")
        if offloaded and int(name.split(".", 3)[2]) in self.host_layer_ids:
            return torch.device("cpu")
        return self.device

    def _load_layer_part(self, name: str, tensor: torch.Tensor, pending: dict) -> bool:
        _, _, index_text, rest = name.split(".", 3)
        index = int(index_text)
        if index >= len(self.layers):
            return False
        moe = self.layers[index].moe
        if moe is not None:
            prefix = next((p for p in _MOE_PREFIXES if rest.startswith(p)), None)
            if prefix is not None:
                return moe.load(rest.removeprefix(prefix), tensor)
        part, _, kind = rest.rpartition(".")
        if part not in _LAYER_PARTS or kind not in ("weight", "bias"):
            return False
        target, slot = _LAYER_PARTS[part]
        if slot is None:
            attribute = target if kind == "weight" else target + "_bias"
            setattr(self.layers[index], attribute, tensor)
        else:
            key = (index, target, kind)
            parts = pending.setdefault(key, [None] * _NUM_FUSED_PARTS[target])
            parts[slot] = tensor
        return True

    def _check_complete(self) -> None:
        arch = self.arch
        missing = [name for name in ("embed_tokens", "final_norm") if getattr(self, name) is None]
        required = ["input_norm", "qkv", "o", "post_norm"]
        if arch.qkv_bias:
            required.append("qkv_bias")
        if arch.o_bias:
            required.append("o_bias")
        if arch.qk_norm:
            required += ["q_norm", "k_norm"]
        dense = ["gate_up", "down"] + (["gate_up_bias", "down_bias"] if arch.mlp_bias else [])
        for index, layer in enumerate(self.layers):
            needed = required if layer.moe is not None else required + dense
            missing += [f"layer {index} {n}" for n in needed if getattr(layer, n) is None]
            if layer.moe is not None:
                missing += [f"layer {index} moe {n}" for n in layer.moe.finish_loading()]
        if missing:
            raise ValueError(f"checkpoint is missing weights: {', '.join(missing[:6])}")

    # ----- forward -------------------------------------------------------------------------

    def decoder_layers(self) -> Iterable[DecoderLayerWeights]:
        """The layers in order, each ready to compute with when yielded (offloaded ones are
        brought in first)."""
        return self.layers if self.offload is None else self.offload.iterate(self.layers)

    def decoder_layer(self, index: int) -> DecoderLayerWeights:
        """Layer index ready to compute with (outside forward: RAG's per-layer passes)."""
        if self.offload is None:
            return self.layers[index]
        return self.offload.layer(self.layers, index)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[LayerKVCache],
        metadata: AttentionMetadata,
        lora: LoRAStep | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, [num_tokens, hidden_size]. With lora, each
        row's adapter delta is added to every fused linear's output (corral/lora/apply.py)."""
        if self.device.type == "cpu":
            kernels = cpu_kernels()
            if kernels is not None:
                if layer_loop_weights(self, metadata, lora, kv_caches) is not None:
                    return forward_layer_loop(
                        self, kernels, input_ids, positions, kv_caches, metadata
                    )
                return self._forward_fused(kernels, input_ids, positions, kv_caches, metadata, lora)
        arch = self.arch
        num_tokens = input_ids.shape[0]
        q_size, kv_size, eps = arch.q_size, arch.kv_size, arch.rms_norm_eps
        hidden = self.embed_tokens[input_ids]
        cos, sin, rows = self.rotary_tables(positions, metadata)
        cos, sin = cos[rows].unsqueeze(1), sin[rows].unsqueeze(1)
        layers = zip(self.decoder_layers(), kv_caches, strict=True)
        for index, (layer, layer_cache) in enumerate(layers):
            normed = rms_norm(hidden, layer.input_norm, eps)
            qkv = linear(normed, layer.qkv, layer.qkv_bias)
            if lora is not None:
                lora.add(index, "qkv", qkv, normed)
            query, key, value = qkv.split([q_size, kv_size, kv_size], dim=-1)
            query = query.view(num_tokens, arch.num_heads, arch.head_dim)
            key = key.view(num_tokens, arch.num_kv_heads, arch.head_dim)
            if arch.qk_norm:
                query = rms_norm(query, layer.q_norm, eps)
                key = rms_norm(key, layer.k_norm, eps)
            query = self.rotary.rotate(query, cos, sin)
            key = self.rotary.rotate(key, cos, sin)
            value = value.view(num_tokens, arch.num_kv_heads, arch.head_dim)
            attended = paged_attention(
                query, key, value, layer_cache, metadata, self.scale, self.layer_windows[index]
            )
            attended = attended.view(num_tokens, q_size)
            out = linear(attended, layer.o, layer.o_bias)
            if self.all_reduce is not None:
                self.all_reduce(out)
            if lora is not None:
                lora.add(index, "o", out, attended)
            hidden = hidden + out
            normed = rms_norm(hidden, layer.post_norm, eps)
            if layer.moe is not None:  # adapters do not reach the experts
                hidden = hidden + layer.moe(normed)
                continue
            gate_up = linear(normed, layer.gate_up, layer.gate_up_bias)
            if lora is not None:
                lora.add(index, "gate_up", gate_up, normed)
            gate, up = gate_up.chunk(2, dim=-1)
            activated = F.silu(gate) * up
            out = linear(activated, layer.down, layer.down_bias)
            if self.all_reduce is not None:
                self.all_reduce(out)
            if lora is not None:
                lora.add(index, "down", out, activated)
            hidden = hidden + out
        return rms_norm(hidden, self.final_norm, eps)

    def _forward_fused(
        self,
        kernels,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[LayerKVCache],
        metadata: AttentionMetadata,
        lora: LoRAStep | None = None,
    ) -> torch.Tensor:
        """The same computation with fused CPU ops (residual add + norm, in-place rotary,
        silu-and-mul): a few calls per layer instead of dozens, for small (decode) steps."""
        arch = self.arch
        num_tokens = input_ids.shape[0]
        q_size, kv_size, eps = arch.q_size, arch.kv_size, arch.rms_norm_eps
        num_rotated = arch.num_heads + arch.num_kv_heads
        residual = self.embed_tokens[input_ids]
        cos, sin, rows = self.rotary_tables(positions, metadata)
        delta = None  # added to the residual by the next norm
        layers = zip(self.decoder_layers(), kv_caches, strict=True)
        for index, (layer, layer_cache) in enumerate(layers):
            normed = kernels.rms_norm(
                delta if delta is not None else residual,
                layer.input_norm,
                eps,
                residual if delta is not None else None,
            )
            qkv = linear(normed, layer.qkv, layer.qkv_bias)
            if lora is not None:
                lora.add(index, "qkv", qkv, normed)
            if arch.qk_norm:
                self._norm_qk_inplace(qkv, layer)
            kernels.rotary_inplace(qkv, rows, cos, sin, num_rotated, arch.head_dim)
            query = qkv[:, :q_size].contiguous().view(num_tokens, arch.num_heads, arch.head_dim)
            key = qkv[:, q_size : q_size + kv_size].view(num_tokens, arch.num_kv_heads, -1)
            value = qkv[:, q_size + kv_size :].view(num_tokens, arch.num_kv_heads, -1)
            attended = paged_attention(
                query, key, value, layer_cache, metadata, self.scale, self.layer_windows[index]
            )
            attended = attended.view(num_tokens, q_size)
            delta = linear(attended, layer.o, layer.o_bias)
            if self.all_reduce is not None:
                self.all_reduce(delta)
            if lora is not None:
                lora.add(index, "o", delta, attended)
            normed = kernels.rms_norm(delta, layer.post_norm, eps, residual)
            if layer.moe is not None:
                delta = layer.moe(normed)
                continue
            if lora is None:
                activated = linear_silu_and_mul(kernels, normed, layer.gate_up, layer.gate_up_bias)
            else:
                gate_up = linear(normed, layer.gate_up, layer.gate_up_bias)
                lora.add(index, "gate_up", gate_up, normed)
                activated = kernels.silu_and_mul(gate_up)
            delta = linear(activated, layer.down, layer.down_bias)
            if self.all_reduce is not None:
                self.all_reduce(delta)
            if lora is not None:
                lora.add(index, "down", delta, activated)
        return kernels.rms_norm(delta, self.final_norm, eps, residual)

    def rotary_tables(
        self, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's cos/sin tables and each token's row in them (see RotaryEmbedding); with
        attention sinks, also each row's turn back for its sink scores (sink_attention.py)."""
        sinks = metadata.sinks
        if sinks is not None and sinks.rotation is None:
            if self._neg_sin is None:
                self._neg_sin = -self.rotary.sin
            sinks.rotation = (self.rotary.cos[sinks.deltas], self._neg_sin[sinks.deltas])
            sinks.tables = (self.rotary.cos, self._neg_sin)
        if self.rotary.dynamic is None:
            return self.rotary.cos, self.rotary.sin, positions
        # Dynamic NTK: a request's tokens rotate with the length it reaches in this step.
        ranges = metadata.row_ranges or [
            (span.row_start, span.row_end) for span in metadata.prefills
        ]
        return self.rotary.step_tables(positions, ranges)

    def _norm_qk_inplace(self, qkv: torch.Tensor, layer: DecoderLayerWeights) -> None:
        """Qwen3's RMSNorm over head_dim of every query and key head, written back into qkv."""
        arch = self.arch
        num_tokens = qkv.shape[0]
        query = qkv[:, : arch.q_size].view(num_tokens, arch.num_heads, arch.head_dim)
        key = qkv[:, arch.q_size : arch.q_size + arch.kv_size]
        key = key.view(num_tokens, arch.num_kv_heads, arch.head_dim)
        query.copy_(rms_norm(query, layer.q_norm, arch.rms_norm_eps))
        key.copy_(rms_norm(key, layer.k_norm, arch.rms_norm_eps))

    def expert_load(self) -> dict[int, list[int]]:
        """Tokens routed to each expert per MoE layer since the last reset: {layer: counts}
        (empty for dense models). Recomputed tokens (preemption) count again."""
        return {
            index: layer.moe.expert_counts.tolist()
            for index, layer in enumerate(self.layers)
            if layer.moe is not None and layer.moe.expert_counts is not None
        }

    def reset_expert_load(self) -> None:
        for layer in self.layers:
            if layer.moe is not None:
                layer.moe.reset_counts()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in float32, [num_rows, vocab_size]."""
        return linear(hidden, self.lm_head).float()
