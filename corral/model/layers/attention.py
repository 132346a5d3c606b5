"""Attention over the paged KV cache for mixed batches of prefill chunks and decodes.

The flattened batch holds the decode tokens first (one query each), then each prefill chunk as a
contiguous run of rows. Metadata is built once per step and shared by every layer.

CPU: decodes use the C++ kernel that reads the paged cache in place (corral.model.kernels), and
prefill chunks use chunked matmul attention. CUDA (or no kernels): gathered blocks + SDPA.
Quantized caches (int8, fp8) are dequantized as they are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from corral.model.kernels import cpu_kernels
from corral.model.layers.kv_gather import (
    decode_gathered,
    gather_context,
    gather_keys,
    gather_values,
)
from corral.model.layers.kv_quant import quantize_kv, raw_view
from corral.model.layers.matmul_dtype import attention_matmul_dtype
from corral.model.layers.sink_attention import SinkMetadata, sink_attention

# Prefill queries are processed this many at a time on CPU, and keys this many at a time
# (online softmax) once a chunk's context is longer: the float32 scores of one (query chunk,
# key chunk) pair bound the memory, whatever the context length.
_QUERY_CHUNK = 128
_KEY_CHUNK = 4096


@dataclass(slots=True)
class PrefillSpan:
    """One request's chunk of num_query tokens at rows [row_start, row_end) of the batch."""

    row_start: int
    row_end: int
    context_len: int  # tokens already in the KV cache before this chunk
    block_ids: torch.Tensor  # int64 [num_blocks] covering positions [0, context_len + num_query)
    # bool [num_query, context_len + num_query], True = may attend; None = plain causal
    mask: torch.Tensor | None
    sink: bool = False  # computed by sink_attention (metadata.sinks) instead


@dataclass(slots=True)
class DecodeBatch:
    """Rows [0, num_decodes) of the batch: one query token per request."""

    num_decodes: int
    block_table: torch.Tensor  # int64 [num_decodes, max_num_blocks], padded with block 0
    seq_lens: torch.Tensor  # int64 [num_decodes]: tokens to attend to, the query's own included
    block_size: int
    # The step's window (keys behind it masked, except the first num_sinks): None for none.
    window: int | None = None
    num_sinks: int = 0
    _mask: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """bool [num_decodes, 1, 1, max_num_blocks * block_size], True = may attend; built on
        first use (the paged decode kernel does not need it)."""
        if self._mask is None:
            num_slots = self.block_table.shape[1] * self.block_size
            key_positions = torch.arange(num_slots, device=self.seq_lens.device).unsqueeze(0)
            mask = key_positions < self.seq_lens.unsqueeze(1)
            if self.window is not None:  # with sinks, the gathered path redoes rows with a gap
                in_window = key_positions > (self.seq_lens - 1 - self.window).unsqueeze(1)
                mask &= in_window | (key_positions < self.num_sinks)
            self._mask = mask.view(self.num_decodes, 1, 1, -1)
        return self._mask


@dataclass(slots=True)
class LayerKVCache:
    """One layer's paged cache. Keys are stored transposed within each block, [num_blocks,
    num_kv_heads, head_dim, block_size], so that one head's scores for all of a block's tokens
    accumulate as vector operations over head_dim; values as rows, [num_blocks, block_size,
    num_kv_heads, head_dim]. Quantized caches add float16 scales [num_blocks, block_size,
    num_kv_heads] for each."""

    key: torch.Tensor
    value: torch.Tensor
    key_scale: torch.Tensor | None = None
    value_scale: torch.Tensor | None = None

    @property
    def quantized(self) -> bool:
        return self.key_scale is not None

    @property
    def block_size(self) -> int:
        return self.value.shape[1]


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [num_tokens]: where each token's K and V are written
    decode: DecodeBatch | None
    prefills: list[PrefillSpan]
    sliding_window: int | None = None
    # Rows [row_start, row_end) of each request in the batch (dynamic-NTK rope reads them).
    row_ranges: list[tuple[int, int]] = field(default_factory=list)
    # Attention sinks (--kv-window-policy sink:N,...): the rows past the first N + W positions.
    sinks: SinkMetadata | None = None


def write_kv(
    key: torch.Tensor, value: torch.Tensor, cache: LayerKVCache, slot_mapping: torch.Tensor
) -> None:
    """Store each token's K and V ([num_tokens, num_kv_heads, head_dim]) at its slot."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    if cache.quantized:
        key, key_scale = quantize_kv(key, cache.key.dtype)
        value, value_scale = quantize_kv(value, cache.value.dtype)
        cache.key_scale.view(-1, num_kv_heads).index_copy_(0, slot_mapping, key_scale)
        cache.value_scale.view(-1, num_kv_heads).index_copy_(0, slot_mapping, value_scale)
    kernels = cpu_kernels() if key.device.type == "cpu" else None
    if kernels is not None:
        kernels.write_kv_cache(
            raw_view(key).contiguous(),
            raw_view(value).contiguous(),
            raw_view(cache.key),
            raw_view(cache.value),
            slot_mapping,
        )
        return
    block_size = cache.block_size
    raw_view(cache.key)[slot_mapping // block_size, :, :, slot_mapping % block_size] = raw_view(key)
    raw_view(cache.value).view(-1, num_kv_heads, head_dim).index_copy_(
        0, slot_mapping, raw_view(value)
    )


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cache: LayerKVCache,
    metadata: AttentionMetadata,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of every query token over its request's cached and new keys.

    query [num_tokens, num_heads, head_dim]; key/value [num_tokens, num_kv_heads, head_dim].
    Returns [num_tokens, num_heads, head_dim]. The new K and V are written to the cache first.
    window: this layer's own sliding window when only some layers have one (the metadata's
    masks are then plain causal and the window is applied here).
    """
    write_kv(key, value, cache, metadata.slot_mapping)
    output = torch.empty_like(query)
    on_cpu = query.device.type == "cpu"
    kernels = cpu_kernels() if on_cpu else None
    if kernels is not None and cache.key.dtype not in (query.dtype, torch.int8):
        kernels = None  # fp8 values: the gathered path dequantizes them
    decode = metadata.decode
    sinks = metadata.sinks
    if decode is not None:
        rows = decode.num_decodes
        if kernels is not None:
            kernels.paged_decode_attention(
                output[:rows],
                query[:rows],
                cache.key,
                cache.value,
                decode.block_table,
                decode.seq_lens,
                scale,
                metadata.sliding_window or window or 0,
                cache.key_scale,
                cache.value_scale,
                sinks.sink_queries(query[:rows], kernels) if sinks is not None else None,
                sinks.num_sink_tokens if sinks is not None else 0,
            )
        else:
            output[:rows] = decode_gathered(query[:rows], cache, decode, scale, window)
    prefills = metadata.prefills
    if kernels is not None and window is None and metadata.sliding_window is None:
        prefills = _prefill_short_prompts(kernels, query, key, value, output, prefills, scale)
    for span in prefills:
        if span.sink:
            continue
        start, end = span.row_start, span.row_end
        if span.context_len == 0:  # a fresh prompt: its own K/V, as computed (not quantized)
            keys, values = key[start:end], value[start:end]
        else:
            keys, values = gather_context(cache, span, query.dtype)
        attend = _prefill_matmul if on_cpu else _prefill_sdpa
        output[start:end] = attend(query[start:end], keys, values, span, scale, window)
    if sinks is not None:

        def gather(block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return gather_keys(cache, block_ids, query.dtype), gather_values(
                cache, block_ids, query.dtype
            )

        spans = sinks.spans if kernels is not None else sinks.spans + sinks.decode_spans
        for span in spans:
            rows = slice(span.row_start, span.row_end)
            output[rows] = sink_attention(
                query[rows], gather, cache.block_size, span, metadata.sinks, scale
            )
    return output


# Fresh prompts of up to kernels.prefill_attention_max_tokens() tokens take the CPU kernel, all
# of a step's in one call. On the AMX Xeon (AVX-512 build: 4,096), one 9-head prompt (3 KV
# heads of 64) took 0.05 / 0.18 / 0.70 / 2.0 / 7.9 / 29 / 145 ms in the kernel at 64 / 128 /
# 256 / 512 / 1,024 / 2,048 / 4,096 tokens against 0.17 / 0.36 / 2.0 / 4.3 / 13 / 39 / 156 ms
# in the torch loop (bf16 batched matmuls); longer ones were not measured and keep the torch
# path, which reads its keys in chunks. Builds without AVX-512 take prompts of up to 128.


def _prefill_short_prompts(
    kernels,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    output: torch.Tensor,
    prefills: list[PrefillSpan],
    scale: float,
) -> list[PrefillSpan]:
    """Attend the spans that are whole short prompts (no context, no mask, no sinks) with the
    CPU kernel into output; returns the spans left for the per-span path."""
    limit = kernels.prefill_attention_max_tokens()
    short: list[tuple[int, int]] = []
    rest: list[PrefillSpan] = []
    for span in prefills:
        fresh = span.context_len == 0 and span.mask is None and not span.sink
        if fresh and span.row_end - span.row_start <= limit:
            short.append((span.row_start, span.row_end))
        else:
            rest.append(span)
    if short:
        rows = torch.tensor(short, dtype=torch.int64)
        kernels.prefill_attention(output, query, key, value, rows, scale)
    return rest


def _prefill_sdpa(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    span: PrefillSpan,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    mask = span.mask
    if mask is None and (span.context_len or window):  # SDPA's is_causal assumes no context
        mask = _allowed(span, 0, query.shape[0], 0, keys.shape[0], query.device, window)
    attended = F.scaled_dot_product_attention(
        query.transpose(0, 1),
        keys.transpose(0, 1),
        values.transpose(0, 1),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return attended.transpose(0, 1)


def _prefill_matmul(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    span: PrefillSpan,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Matmul attention in query chunks; grouped query heads share one matmul per KV head, and
    each chunk only reads the keys up to its last query's position."""
    out_dtype = query.dtype
    compute_dtype = attention_matmul_dtype(out_dtype, query.device)
    if compute_dtype != out_dtype:
        query, keys, values = (
            query.to(compute_dtype),
            keys.to(compute_dtype),
            values.to(compute_dtype),
        )
    num_query, num_heads, head_dim = query.shape
    num_kv_heads = keys.shape[1]
    group = num_heads // num_kv_heads
    context = span.context_len
    # [num_kv_heads, group, num_query, head_dim] and [num_kv_heads, kv_len, head_dim]
    grouped = query.view(num_query, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
    keys_t = keys.permute(1, 2, 0)
    values_h = values.transpose(0, 1)
    output = torch.empty(
        num_kv_heads, group, num_query, head_dim, dtype=query.dtype, device=query.device
    )
    for first in range(0, num_query, _QUERY_CHUNK):
        last = min(first + _QUERY_CHUNK, num_query)
        kv_end = context + last
        chunk = grouped[:, :, first:last].reshape(num_kv_heads, group * (last - first), head_dim)
        if kv_end > _KEY_CHUNK:
            attended = _attend_in_key_chunks(
                chunk, keys_t, values_h, span, first, last, scale, window
            )
            output[:, :, first:last] = attended.view(num_kv_heads, group, last - first, head_dim)
            continue
        scores = torch.bmm(chunk, keys_t[:, :, :kv_end]).float().mul_(scale)
        scores = scores.view(num_kv_heads, group, last - first, kv_end)
        allowed = _allowed(span, first, last, 0, kv_end, query.device, window)
        scores.masked_fill_(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(query.dtype)
        probs = probs.view(num_kv_heads, group * (last - first), kv_end)
        attended = torch.bmm(probs, values_h[:, :kv_end])
        output[:, :, first:last] = attended.view(num_kv_heads, group, last - first, head_dim)
    return output.permute(2, 0, 1, 3).reshape(num_query, num_heads, head_dim).to(out_dtype)


def _attend_in_key_chunks(
    chunk: torch.Tensor,
    keys_t: torch.Tensor,
    values_h: torch.Tensor,
    span: PrefillSpan,
    first: int,
    last: int,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Queries [first, last) of the span (chunk: [num_kv_heads, group * rows, head_dim]) over
    their keys _KEY_CHUNK at a time, with a running max and sum (online softmax): float32
    scores for one key chunk at a time. Returns [num_kv_heads, group * rows, head_dim]."""
    num_kv_heads, num_rows, _ = chunk.shape
    kv_end = span.context_len + last
    running_max = chunk.new_full((num_kv_heads, num_rows, 1), float("-inf"), dtype=torch.float32)
    running_sum = torch.zeros_like(running_max)
    accumulated = chunk.new_zeros((num_kv_heads, num_rows, values_h.shape[-1]), dtype=torch.float32)
    for low in range(0, kv_end, _KEY_CHUNK):
        high = min(low + _KEY_CHUNK, kv_end)
        scores = torch.bmm(chunk, keys_t[:, :, low:high]).float().mul_(scale)
        scores = scores.view(num_kv_heads, -1, last - first, high - low)
        allowed = _allowed(span, first, last, low, high, chunk.device, window)
        scores.masked_fill_(~allowed, float("-inf"))
        scores = scores.view(num_kv_heads, num_rows, high - low)
        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        # A row with no allowed key yet keeps max -inf: shift by 0 so that exp gives 0, not nan.
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        probs = torch.exp(scores - shift)
        rescale = torch.exp(running_max - shift)
        running_sum = running_sum * rescale + probs.sum(dim=-1, keepdim=True)
        values = torch.bmm(probs.to(values_h.dtype), values_h[:, low:high]).float()
        accumulated = accumulated * rescale + values
        running_max = new_max
    return (accumulated / running_sum).to(chunk.dtype)


def _allowed(
    span: PrefillSpan,
    first: int,
    last: int,
    low: int,
    high: int,
    device: torch.device,
    window: int | None = None,
) -> torch.Tensor:
    """bool [last - first, high - low]: which of keys [low, high) queries [first, last) of the
    span may see: the span's mask, else causal (query i sits at context_len + i), within the
    layer's window if it has one."""
    if span.mask is not None:
        return span.mask[first:last, low:high]
    positions = torch.arange(first, last, device=device).unsqueeze(1) + span.context_len
    key_positions = torch.arange(low, high, device=device).unsqueeze(0)
    allowed = key_positions <= positions
    if window is not None:
        allowed &= key_positions > positions - window
    return allowed
