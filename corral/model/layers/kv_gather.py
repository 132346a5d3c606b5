"""Paged KV gathered into dense tensors (torch, any device): the blocks of a request in token
order, dequantized where the cache is int8/fp8; decode attention over them with SDPA (the path
where the CPU kernel does not apply)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from corral.model.layers.kv_quant import dequantize_kv, raw_view

if TYPE_CHECKING:
    from corral.model.layers.attention import DecodeBatch, LayerKVCache, PrefillSpan


def gather_keys(cache: LayerKVCache, block_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The blocks' keys in token order, [len(block_ids) * block_size, num_kv_heads, head_dim]."""
    blocks = raw_view(cache.key).index_select(0, block_ids).view(cache.key.dtype)
    keys = blocks.permute(0, 3, 1, 2).reshape(-1, blocks.shape[1], blocks.shape[2])
    return _dequantize(keys, cache.key_scale, block_ids, dtype)


def gather_values(cache: LayerKVCache, block_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    num_kv_heads, head_dim = cache.value.shape[2], cache.value.shape[3]
    values = raw_view(cache.value).index_select(0, block_ids).view(cache.value.dtype)
    return _dequantize(values.view(-1, num_kv_heads, head_dim), cache.value_scale, block_ids, dtype)


def _dequantize(
    gathered: torch.Tensor, scales: torch.Tensor | None, block_ids: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    if scales is None:
        return gathered
    block_scales = scales.index_select(0, block_ids).view(-1, gathered.shape[1])
    return dequantize_kv(gathered, block_scales, dtype)


def gather_context(
    cache: LayerKVCache, span: PrefillSpan, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of positions [0, context_len + num_query), [kv_len, num_kv_heads, dim]."""
    kv_len = span.context_len + span.row_end - span.row_start
    keys = gather_keys(cache, span.block_ids, dtype)
    values = gather_values(cache, span.block_ids, dtype)
    return keys[:kv_len], values[:kv_len]


def decode_gathered(
    query: torch.Tensor,
    cache: LayerKVCache,
    decode: DecodeBatch,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    rows = decode.num_decodes
    num_kv_heads, head_dim = cache.value.shape[2], cache.value.shape[3]
    num_slots = decode.mask.shape[-1]
    flat_table = decode.block_table.view(-1)
    keys = gather_keys(cache, flat_table, query.dtype)
    values = gather_values(cache, flat_table, query.dtype)
    attended = F.scaled_dot_product_attention(
        query.unsqueeze(2),
        keys.view(rows, num_slots, num_kv_heads, head_dim).transpose(1, 2),
        values.view(rows, num_slots, num_kv_heads, head_dim).transpose(1, 2),
        attn_mask=decode.mask if window is None else _windowed(decode, window),
        scale=scale,
        enable_gqa=True,
    )
    return attended.squeeze(2)


def _windowed(decode: DecodeBatch, window: int) -> torch.Tensor:
    """The decode mask less the keys behind each row's window."""
    key_positions = torch.arange(decode.mask.shape[-1], device=decode.mask.device)
    lowest = (decode.seq_lens - window).view(-1, 1, 1, 1)
    return decode.mask & (key_positions >= lowest)
