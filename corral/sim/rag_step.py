"""Pricing RAG chunk reuse in the simulator: a blended request's step as the model executor
runs it (corral/model/chunk_blend.py), for the cost model.

BatchShapeCounter counts a blended request as one prefill chunk of all its tokens from its
prefix hit on; the executor instead runs (a) the chunks seen for the first time, alone,
(b) the first layer over all those tokens (the selection pass), (c) every layer over the
recomputed tokens only (those outside the chunks, the chunk tokens picked for recompute, and
the last prompt token), and (d) copies the reused K/V. blended_shape rewrites the step's
BatchShape accordingly: (a) as prefill chunks, (b) as 1/num_layers of a prefill chunk of all the
tokens, (c) as a prefill chunk of the recomputed tokens at their mean position, (d) as reads of
twice the copied tokens' KV (a read and a write each), priced like decode context.
"""

from __future__ import annotations

from corral.core.batch_shape import BatchShape
from corral.core.chunk_reuse_plan import ChunkReusePlan

# Layers assumed when the cost model has no model shape (a profiled one).
DEFAULT_NUM_LAYERS = 24


def _pairs(num_query: int, context: int) -> int:
    return num_query * context + num_query * (num_query + 1) // 2


def blended_shape(
    batch: BatchShape, plan: ChunkReusePlan, num_layers: int = DEFAULT_NUM_LAYERS
) -> BatchShape:
    """The step's BatchShape with each blend and chunk prefill priced as it runs."""
    tokens, requests = batch.num_prefill_tokens, batch.num_prefill_requests
    context, pairs = batch.prefill_context_tokens, batch.prefill_attention_pairs
    decode_context = batch.decode_context_tokens
    for blend in plan.blends.values():
        num_all = blend.end + 1 - blend.start  # what the counter counted
        tokens -= num_all
        context -= blend.start
        pairs -= _pairs(num_all, blend.start)
        num_rows = blend.end - blend.start
        selection_tokens = -(-num_rows // num_layers)
        recomputed = blend.num_recomputed_tokens + 1
        mean_context = (blend.start + blend.end) // 2
        tokens += selection_tokens + recomputed
        context += blend.start // num_layers + mean_context
        pairs += _pairs(num_rows, blend.start) // num_layers + recomputed * (mean_context + 1)
        decode_context += 2 * blend.num_copied_tokens
    for prefill in plan.prefills:
        num_query = prefill.num_computed_tokens
        if num_query > 0:
            tokens += num_query
            requests += 1
            context += prefill.num_cached_tokens
            pairs += _pairs(num_query, prefill.num_cached_tokens)
    return batch._replace(
        num_prefill_tokens=tokens,
        num_prefill_requests=requests,
        prefill_context_tokens=context,
        prefill_attention_pairs=pairs,
        decode_context_tokens=decode_context,
    )
