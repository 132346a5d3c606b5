"""Attention sinks (StreamingLLM): a query attends to the first num_sink_tokens keys and to the
last window_tokens, with positions counted inside that cache, so that generation runs on past
the context the model was trained on (`--kv-window-policy sink:N,window:W`).

Positions. StreamingLLM numbers the cached keys 0..N+W-1 in cache order, the query last. Keys
are stored here rotated by their original positions; a window key at p and the query at t are
then t - p apart, exactly as in cache order. Only the sinks differ: in cache order they sit
t - (N + W - 1) = delta closer to the query than their original positions say. Rotating the
query back by delta for its scores against the sinks gives them the cache-order distance
(rotary embeddings compose: rotate(rotate(q, t), -delta) = rotate(q, t - delta)). So nothing
in the cache is ever rewritten, and prefix caching of the sink blocks stays valid.

Rows whose query has no gap yet (t < N + W, delta 0) attend causally as without sinks; the
engine sends those through the ordinary paths and only the others (SinkSpan) through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from corral.model.layers.matmul_dtype import attention_matmul_dtype
from corral.model.layers.rotary import apply_rotation

# block ids -> their keys and values in token order, [num_blocks * block_size, kv_heads, dim]
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(slots=True)
class SinkSpan:
    """One request's rows [row_start, row_end) at positions [first_position, ...), one per row,
    whose block table is block_ids (int64, covering every position up to the last row's)."""

    row_start: int
    row_end: int
    first_position: int
    block_ids: torch.Tensor


@dataclass(slots=True)
class SinkMetadata:
    """A step's attention sinks: the prefill chunks and decode rows whose queries have a gap
    between the sinks and their window (the CPU decode kernel takes the decode rows itself,
    given the turned-back queries: sink_queries)."""

    num_sink_tokens: int
    window_tokens: int
    spans: list[SinkSpan]
    # Rows of the whole batch: how far each query turns back for its sink scores (0: not at
    # all), and the rotation by -delta (set by the model once per step: cos, -sin of delta).
    deltas: torch.Tensor
    decode_spans: list[SinkSpan] = field(default_factory=list)
    has_gap: bool = True  # some row has delta > 0
    rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    # The model's whole cos and -sin tables (rows by position), for the CPU kernel.
    tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def sink_queries(self, query: torch.Tensor, kernels: Any = None) -> torch.Tensor:
        """query's rows (the batch's first rows) turned back by their deltas (query itself
        when no row has a gap); kernels: corral's CPU kernels, which rotate in one call."""
        if not self.has_gap:
            return query
        rows, num_heads, head_dim = query.shape
        if kernels is not None and self.tables is not None:
            turned = query.contiguous().clone()
            cos, neg_sin = self.tables
            kernels.rotary_inplace(
                turned.view(rows, -1), self.deltas[:rows], cos, neg_sin, num_heads, head_dim
            )
            return turned
        cos, sin = self.rotation
        turned = apply_rotation(query, cos[:rows].unsqueeze(1), sin[:rows].unsqueeze(1))
        return turned.to(query.dtype).contiguous()


def sink_delta(position: int, num_sink_tokens: int, window_tokens: int) -> int:
    """How many positions the sinks move towards a query at position (0: no gap yet)."""
    return max(0, position - (num_sink_tokens + window_tokens - 1))


def sink_attention(
    query: torch.Tensor,
    gather: Gather,
    block_size: int,
    span: SinkSpan,
    sinks: SinkMetadata,
    scale: float,
) -> torch.Tensor:
    """Outputs [num_rows, num_heads, head_dim] of the span's queries (rows of query, rotated by
    their own positions); gather reads one layer's paged cache."""
    num_rows, num_heads, head_dim = query.shape
    num_sinks, window = sinks.num_sink_tokens, sinks.window_tokens
    first, last = span.first_position, span.first_position + num_rows - 1
    # Window keys: positions [low, last], never below the sinks.
    low = max(num_sinks, first - window + 1)
    first_block = low // block_size
    window_blocks = span.block_ids[first_block : last // block_size + 1]
    sink_blocks = span.block_ids[: -(-num_sinks // block_size)]
    keys_w, values_w = gather(window_blocks)
    window_rows = slice(low - first_block * block_size, last + 1 - first_block * block_size)
    keys_w, values_w = keys_w[window_rows], values_w[window_rows]
    keys_s, values_s = gather(sink_blocks)
    keys_s, values_s = keys_s[:num_sinks], values_s[:num_sinks]
    num_kv_heads = keys_w.shape[1]
    group = num_heads // num_kv_heads
    out_dtype = query.dtype
    dtype = attention_matmul_dtype(out_dtype, query.device)
    query, keys_w, keys_s = query.to(dtype), keys_w.to(dtype), keys_s.to(dtype)
    values_w, values_s = values_w.to(dtype), values_s.to(dtype)

    cos, sin = sinks.rotation
    rows = slice(span.row_start, span.row_end)
    query_sink = apply_rotation(
        query, cos[rows].unsqueeze(1).to(dtype), sin[rows].unsqueeze(1).to(dtype)
    )

    def grouped(q: torch.Tensor) -> torch.Tensor:  # [num_kv_heads, group * num_rows, head_dim]
        q = q.view(num_rows, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        return q.reshape(num_kv_heads, group * num_rows, head_dim)

    positions = torch.arange(first, last + 1, device=query.device)
    key_positions = torch.arange(low, last + 1, device=query.device)
    allowed_w = (key_positions.unsqueeze(0) <= positions.unsqueeze(1)) & (
        key_positions.unsqueeze(0) > (positions - window).unsqueeze(1)
    )
    allowed_s = torch.arange(num_sinks, device=query.device).unsqueeze(0) <= positions.unsqueeze(1)
    scores_w = torch.bmm(grouped(query), keys_w.permute(1, 2, 0)).float().mul_(scale)
    scores_s = torch.bmm(grouped(query_sink), keys_s.permute(1, 2, 0)).float().mul_(scale)
    scores_s = scores_s.view(num_kv_heads, group, num_rows, -1)
    scores_w = scores_w.view(num_kv_heads, group, num_rows, -1)
    scores_s.masked_fill_(~allowed_s, float("-inf"))
    scores_w.masked_fill_(~allowed_w, float("-inf"))
    scores = torch.cat((scores_s, scores_w), dim=-1)
    probs = torch.softmax(scores, dim=-1).to(query.dtype).view(num_kv_heads, group * num_rows, -1)
    values = torch.cat((values_s, values_w)).transpose(0, 1)  # [num_kv_heads, keys, head_dim]
    attended = torch.bmm(probs, values).view(num_kv_heads, group, num_rows, head_dim)
    return attended.permute(2, 0, 1, 3).reshape(num_rows, num_heads, head_dim).to(out_dtype)
