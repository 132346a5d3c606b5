"""One decoder layer of LlamaFamilyModel over any rows of one request (chunk blending).

LlamaFamilyModel.forward runs every layer over the same rows; chunk blending
(corral/model/chunk_blend.py) runs the first layer over all of a request's new rows and the
later layers over a subset of them, at arbitrary positions. These functions are the same
computation as the model's generic (unfused) layer body, without LoRA and tensor parallelism,
which chunk reuse refuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.model.layers.attention import (
    AttentionMetadata,
    LayerKVCache,
    PrefillSpan,
    paged_attention,
)
from corral.model.layers.linear import linear, rms_norm
from corral.model.models.llama import LlamaFamilyModel

# Rows per PrefillSpan of a subset: each span reads the keys up to its own last row's position.
_ROWS_PER_SPAN = 128


def span_metadata(
    positions: torch.Tensor,
    block_ids: torch.Tensor,
    block_size: int,
    sliding_window: int | None,
) -> AttentionMetadata:
    """Attention metadata for one request's rows at sorted, distinct positions (any subset of
    [0, end)); every position below end must have its K/V in the cache (or among the rows).

    The rows are cut into spans of up to _ROWS_PER_SPAN rows. A span of rows [a, b) reads keys
    [0, e) with e = p_(b-1) + 1, so its context_len is e - (b - a); row i (position p_i <=
    p_(b-1) - (b - 1 - i), the positions being distinct) attends to keys [0, p_i], within the
    window if any. Every row's K/V are written before any span reads the cache.
    """
    num_rows = positions.shape[0]
    cpu_positions = positions.cpu()
    end = int(cpu_positions[-1]) + 1
    table = block_ids[: -(-end // block_size)]
    slots = table[positions // block_size] * block_size + positions % block_size
    spans = []
    for first in range(0, num_rows, _ROWS_PER_SPAN):
        last = min(first + _ROWS_PER_SPAN, num_rows)
        span_end = int(cpu_positions[last - 1]) + 1
        rows = positions[first:last].unsqueeze(1)
        key_positions = torch.arange(span_end, device=positions.device).unsqueeze(0)
        mask = key_positions <= rows
        if sliding_window is not None:
            mask &= key_positions > rows - sliding_window
        span_table = table[: -(-span_end // block_size)]
        context_len = span_end - (last - first)
        spans.append(PrefillSpan(first, last, context_len, span_table, mask))
    return AttentionMetadata(
        slot_mapping=slots,
        decode=None,
        prefills=spans,
        sliding_window=sliding_window,
        row_ranges=[(0, num_rows)],
    )


def layer_qkv(
    model: LlamaFamilyModel, index: int, hidden: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer index's rotated query [n, heads, dim], key and value [n, kv_heads, dim] of the
    residual stream hidden [n, hidden_size] at positions."""
    arch = model.arch
    layer = model.decoder_layer(index)
    num_rows = hidden.shape[0]
    normed = rms_norm(hidden, layer.input_norm, arch.rms_norm_eps)
    qkv = linear(normed, layer.qkv, layer.qkv_bias)
    query, key, value = qkv.split([arch.q_size, arch.kv_size, arch.kv_size], dim=-1)
    query = query.reshape(num_rows, arch.num_heads, arch.head_dim)
    key = key.reshape(num_rows, arch.num_kv_heads, arch.head_dim)
    if arch.qk_norm:
        query = rms_norm(query, layer.q_norm, arch.rms_norm_eps)
        key = rms_norm(key, layer.k_norm, arch.rms_norm_eps)
    cos = model.rotary.cos[positions].unsqueeze(1)
    sin = model.rotary.sin[positions].unsqueeze(1)
    query = model.rotary.rotate(query, cos, sin)
    key = model.rotary.rotate(key, cos, sin)
    return query, key, value.reshape(num_rows, arch.num_kv_heads, arch.head_dim)


def run_layer(
    model: LlamaFamilyModel,
    index: int,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    cache: LayerKVCache,
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """The residual stream after layer index (its K/V written to the cache at the rows' slots)."""
    arch = model.arch
    layer = model.decoder_layer(index)
    query, key, value = layer_qkv(model, index, hidden, positions)
    attended = paged_attention(query, key, value, cache, metadata, model.scale)
    hidden = hidden + linear(attended.reshape(hidden.shape[0], arch.q_size), layer.o, layer.o_bias)
    normed = rms_norm(hidden, layer.post_norm, arch.rms_norm_eps)
    if layer.moe is not None:
        return hidden + layer.moe(normed)
    gate, up = linear(normed, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
    return hidden + linear(F.silu(gate) * up, layer.down, layer.down_bias)
