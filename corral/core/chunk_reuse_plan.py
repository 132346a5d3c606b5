"""What RAG chunk reuse asks of an executor in one step, and its counters (torch-free).

The scheduler's ChunkReuse (corral/core/chunk_reuse.py) fills a ChunkReusePlan; the model
executor (corral/model/chunk_blend.py) or the simulator's cost model carries it out. Positions
are token positions: chunk positions count from the chunk's first token (its position when it
was computed alone), request positions from the request's first token.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ChunkPrefill:
    """Compute a chunk alone (positions 0..len(token_ids)-1) into chunk-store blocks.

    block_ids covers the whole chunk; its first num_cached_tokens tokens are already there
    (a store hit on the chunk's leading blocks), the rest are computed.
    """

    token_ids: list[int]
    block_ids: list[int]
    num_cached_tokens: int = 0

    @property
    def num_computed_tokens(self) -> int:
        return len(self.token_ids) - self.num_cached_tokens


@dataclass(frozen=True, slots=True)
class ChunkCopy:
    """Copy chunk positions [source_start, source_start + num_tokens) of a stored chunk into
    request positions [position, position + num_tokens), keys re-rotated by position -
    source_start; then recompute num_recompute of those tokens (the largest KV deviations)."""

    source_block_ids: list[int]
    source_start: int
    position: int
    num_tokens: int
    num_recompute: int


@dataclass(frozen=True, slots=True)
class BlendPlan:
    """One request's blended prefill of positions [start, end) (end = its tokens less one: the
    last token runs in the ordinary batch and gives the logits). Positions of [start, end) not
    covered by a copy are computed in full."""

    request_id: str
    start: int
    end: int
    copies: list[ChunkCopy]

    @property
    def num_copied_tokens(self) -> int:
        return sum(copy.num_tokens for copy in self.copies)

    @property
    def num_recomputed_tokens(self) -> int:
        """Tokens run through every layer: those not copied, and the copies' recomputed ones."""
        recomputed = sum(copy.num_recompute for copy in self.copies)
        return self.end - self.start - self.num_copied_tokens + recomputed


@dataclass(frozen=True, slots=True)
class ChunkReusePlan:
    """A step's chunk work, in order: standalone prefills first (copies may read them), then
    each request's blend before the ordinary forward pass."""

    prefills: list[ChunkPrefill] = field(default_factory=list)
    blends: dict[str, BlendPlan] = field(default_factory=dict)


@dataclass(slots=True)
class ChunkReuseStats:
    """Counters of the chunk store and the blends (chunks counted once per request use)."""

    num_chunk_hits: int = 0
    num_chunk_misses: int = 0
    num_blended_requests: int = 0
    num_copied_tokens: int = 0
    num_recomputed_tokens: int = 0
    num_chunk_prefill_tokens: int = 0
