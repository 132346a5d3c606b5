"""Attention over the paged KV cache for mixed batches of prefill chunks and decodes.

The flattened batch holds the decode tokens first (one query each), then each prefill chunk as a
contiguous run of rows. Metadata is built once per step and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillSpan:
    """One request's chunk of num_query tokens at rows [row_start, row_end) of the batch."""

    row_start: int
    row_end: int
    context_len: int  # tokens already in the KV cache before this chunk
    block_ids: torch.Tensor  # int64 [num_blocks] covering positions [0, context_len + num_query)
    # bool [num_query, context_len + num_query], True = may attend; None = plain causal, no context
    mask: torch.Tensor | None


@dataclass(slots=True)
class DecodeBatch:
    """Rows [0, num_decodes) of the batch: one query token per request."""

    num_decodes: int
    block_table: torch.Tensor  # int64 [num_decodes, max_num_blocks], padded with block 0
    mask: torch.Tensor  # bool [num_decodes, 1, 1, max_num_blocks * block_size]


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]: where each token's K and V are written
    decode: DecodeBatch | None
    prefills: list[PrefillSpan]


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store each token's K and V ([num_tokens, num_kv_heads, head_dim]) at its slot."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of every query token over its request's cached and new keys.

    query [num_tokens, num_heads, head_dim]; key/value [num_tokens, num_kv_heads, head_dim];
    caches [num_blocks, block_size, num_kv_heads, head_dim]. Returns [num_tokens, num_heads,
    head_dim]. The new K and V are written to the cache first.
    """
    write_kv(key, value, key_cache, value_cache, metadata.slot_mapping)
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    output = torch.empty_like(query)
    decode = metadata.decode
    if decode is not None:
        rows = decode.num_decodes
        num_slots = decode.mask.shape[-1]
        keys = key_cache[decode.block_table].view(rows, num_slots, num_kv_heads, head_dim)
        values = value_cache[decode.block_table].view(rows, num_slots, num_kv_heads, head_dim)
        attended = F.scaled_dot_product_attention(
            query[:rows].unsqueeze(2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=decode.mask,
            scale=scale,
            enable_gqa=True,
        )
        output[:rows] = attended.squeeze(2)
    for span in metadata.prefills:
        start, end = span.row_start, span.row_end
        queries = query[start:end].transpose(0, 1)
        if span.mask is None:
            keys = key[start:end].transpose(0, 1)
            values = value[start:end].transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                queries, keys, values, is_causal=True, scale=scale, enable_gqa=True
            )
        else:
            kv_len = span.mask.shape[-1]
            keys = key_cache[span.block_ids].view(-1, num_kv_heads, head_dim)[:kv_len]
            values = value_cache[span.block_ids].view(-1, num_kv_heads, head_dim)[:kv_len]
            attended = F.scaled_dot_product_attention(
                queries,
                keys.transpose(0, 1),
                values.transpose(0, 1),
                attn_mask=span.mask,
                scale=scale,
                enable_gqa=True,
            )
        output[start:end] = attended.transpose(0, 1)
    return output
