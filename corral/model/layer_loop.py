"""The C++ layer loop (corral/model/kernels/cpu_layer_loop.cpp): a decode step's whole decoder
stack in one call, with the same kernels in the same order as LlamaFamilyModel._forward_fused,
so results are bit for bit the same; what it saves is the per-layer Python and tensor
bookkeeping (about 1 ms of a 19 ms single-stream step of the SmolLM-135M shape here).

It covers the plain case only; anything else takes the Python path: steps with prefill rows,
LoRA, attention sinks or windows, quantized KV, and models with q/k norm, tensor parallelism,
MoE layers, int8 weights, weight offloading or dynamic rope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from corral.lora.step import LoRAStep
from corral.model.layers.attention import AttentionMetadata, LayerKVCache
from corral.model.layers.linear import uses_row_kernel

if TYPE_CHECKING:
    from corral.model.models.llama import LlamaFamilyModel

# The order of a layer's weights in the loop's lists (cpu_layer_loop.cpp LayerWeight).
_LAYER_WEIGHTS = (
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
)


def layer_loop_weights(
    model: LlamaFamilyModel,
    metadata: AttentionMetadata,
    lora: LoRAStep | None,
    kv_caches: list[LayerKVCache],
) -> list[list[torch.Tensor | None]] | None:
    """Every layer's weights in the loop's order when this step can take the loop, else None.
    The model's part of the answer is worked out once (model._loop_weights; [] for no)."""
    if not model.use_layer_loop or lora is not None or metadata.prefills:
        return None
    if metadata.decode is None or metadata.sinks is not None or metadata.sliding_window:
        return None
    cache = kv_caches[0]
    if cache.key_scale is not None or cache.key.dtype != model.dtype:
        return None
    if model._loop_weights is None:
        plain = not (
            model.arch.qk_norm
            or model.all_reduce is not None
            or model.offload is not None
            or model.rotary.dynamic is not None
            or any(window is not None for window in model.layer_windows)
        )
        weights = [[getattr(layer, name) for name in _LAYER_WEIGHTS] for layer in model.layers]
        dense = all(
            layer.moe is None and all(w is None or type(w) is torch.Tensor for w in layer_weights)
            for layer, layer_weights in zip(model.layers, weights, strict=True)
        )
        model._loop_weights = weights if plain and dense else []
    return model._loop_weights or None


def forward_layer_loop(
    model: LlamaFamilyModel,
    kernels,
    weights: list[list[torch.Tensor | None]],
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[LayerKVCache],
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """The hidden states after the final norm, as LlamaFamilyModel.forward returns them."""
    arch = model.arch
    cos, sin, rows = model.rotary_tables(positions, metadata)
    decode = metadata.decode
    assert decode is not None
    return kernels.decode_layers(
        model.embed_tokens[input_ids],
        weights,
        [cache.key for cache in kv_caches],
        [cache.value for cache in kv_caches],
        rows,
        cos,
        sin,
        metadata.slot_mapping,
        decode.block_table,
        decode.seq_lens,
        model.final_norm,
        model.scale,
        arch.rms_norm_eps,
        arch.num_heads,
        arch.num_kv_heads,
        arch.head_dim,
        uses_row_kernel(input_ids.shape[0], model.dtype, model.device),
    )
