"""RAG chunk KV reuse at any position (--rag-chunk-reuse), the control plane (torch-free).

A request may name retrieved chunks: token spans of its prompt (Request.rag_chunk_spans). The
chunk store keeps the KV of each chunk computed alone (positions 0..L-1) in ordinary KV blocks,
registered in the block pool under the chained hashes of the chunk's tokens with an extra key
that no prefix chain has ("rag_chunk", plus the request's adapter and salt): evictable like
prefix-cache blocks, never matched by a prefix lookup. A chunk seen for the first time is
computed alone into fresh blocks in the step that first needs it (a ChunkPrefill).

At admission a request with chunks past its prefix hit is blended (CacheBlend's idea): every
token from the prefix hit to the last prompt token is scheduled in one step, but only the
tokens outside chunks, a recompute_ratio share of each chunk's tokens and the chunk prefills
count against the token budget; the chunks' KV is copied from the store with re-rotated keys
(corral/model/chunk_blend.py). Such KV is approximate, so the request registers in the prefix
cache only its blocks before the first copied token (Request.rag_num_exact_tokens).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from corral.core.chunk_reuse_plan import (
    BlendPlan,
    ChunkCopy,
    ChunkPrefill,
    ChunkReusePlan,
    ChunkReuseStats,
)
from corral.core.kv_cache import KVCacheManager, PrefixMatch, cdiv
from corral.request import Request

# The extra key that puts chunk-store hash chains in a namespace of their own.
CHUNK_STORE_KEY = "rag_chunk"


class _ChunkKey:
    """What the KV manager hashes a request by, for a chunk computed alone."""

    __slots__ = ("all_token_ids", "block_hashes", "adapter_id", "cache_salt")

    def __init__(self, token_ids: list[int], request: Request) -> None:
        self.all_token_ids = token_ids
        self.block_hashes: list[bytes | int] = []
        self.adapter_id = request.adapter_id
        self.cache_salt = (CHUNK_STORE_KEY, request.cache_salt)


class _StoredChunk(NamedTuple):
    key: _ChunkKey
    num_blocks: int
    num_hit_blocks: int  # leading blocks the store holds now on the device
    # The following blocks found in the host tier (loaded into fresh device blocks).
    host_hashes: list[bytes | int]

    @property
    def num_stored_blocks(self) -> int:
        return self.num_hit_blocks + len(self.host_hashes)


class BlendDraft(NamedTuple):
    """What blending a request would take: its chunk copies (source blocks not yet known),
    the distinct chunks with their store state, and the token budget it costs."""

    start: int
    end: int
    copies: list[tuple[tuple[int, ...], int, int, int, int]]  # chunk, src, position, n, recompute
    chunks: dict[tuple[int, ...], _StoredChunk]
    cost_tokens: int


class ChunkReuse:
    """Plans blended admissions over the KV manager; one per scheduler."""

    def __init__(self, kv: KVCacheManager, recompute_ratio: float) -> None:
        if not 0.0 <= recompute_ratio <= 1.0:
            raise ValueError(f"rag_recompute_ratio must be in [0, 1], got {recompute_ratio}")
        if not kv.enable_prefix_caching:
            raise ValueError("rag_chunk_reuse needs prefix caching (its store is the cache's)")
        self.kv = kv
        self.recompute_ratio = recompute_ratio
        self.stats = ChunkReuseStats()
        self._prefills: list[ChunkPrefill] = []
        self._blends: dict[str, BlendPlan] = {}
        # Holds on store blocks until the step that reads them has run.
        self._holder_ids: list[str] = []
        self._num_holds = 0

    def num_recompute(self, num_tokens: int) -> int:
        """Tokens of a copied run of num_tokens that are recomputed."""
        return min(num_tokens, math.ceil(self.recompute_ratio * num_tokens - 1e-9))

    def draft(self, request: Request, prefix: PrefixMatch) -> BlendDraft | None:
        """The blend of the request after its prefix hit; None when no chunk token lies in
        [prefix end, last prompt token) or the request must compute every prompt position
        (prompt logprobs)."""
        spans = request.rag_chunk_spans
        if not spans or request.sampling_params.prompt_logprobs is not None:
            return None
        start = prefix.num_tokens
        end = request.num_tokens - 1
        tokens = request.all_token_ids
        copies = []
        chunks: dict[tuple[int, ...], _StoredChunk] = {}
        for chunk_start, length in sorted(spans):
            first, last = max(chunk_start, start), min(chunk_start + length, end)
            if last <= first:
                continue
            chunk = tuple(tokens[chunk_start : chunk_start + length])
            copies.append((chunk, first - chunk_start, first, last - first))
            if chunk not in chunks:
                chunks[chunk] = self._look_up(list(chunk), request)
        if not copies:
            return None
        num_copied = sum(copy[3] for copy in copies)
        with_recompute = [(*copy, self.num_recompute(copy[3])) for copy in copies]
        num_recomputed = sum(copy[4] for copy in with_recompute)
        bs = self.kv.block_size
        fresh = sum(
            len(chunk) - min(len(chunk), stored.num_stored_blocks * bs)
            for chunk, stored in chunks.items()
            if stored.num_stored_blocks < stored.num_blocks
        )
        # The tokens run through every layer (the last prompt token among them) and the chunks
        # computed alone; the copies and the selection layer's pass are not counted.
        cost = end - start - num_copied + num_recomputed + 1 + fresh
        return BlendDraft(start, end, with_recompute, chunks, cost)

    def admit(self, request: Request, prefix: PrefixMatch, draft: BlendDraft) -> list[int] | None:
        """Hold the store's blocks of the request's chunks, allocate blocks for its missing
        chunks and for all its tokens; the request's new block ids, or None, changing
        nothing, when the pool cannot supply them."""
        holder_id = f"rag:{self._num_holds}:{request.request_id}"
        self._num_holds += 1
        kv, bs = self.kv, self.kv.block_size
        source_blocks: dict[tuple[int, ...], list[int]] = {}
        missing: list[tuple[tuple[int, ...], _StoredChunk, int]] = []
        hold_ids = []
        for index, (chunk, stored) in enumerate(draft.chunks.items()):
            hold_id = f"{holder_id}:{index}"
            num_held = kv.hold_cached_prefix(hold_id, stored.key, stored.num_blocks)
            if num_held:
                hold_ids.append(hold_id)
            hashes = stored.key.block_hashes[: stored.num_blocks]
            source_blocks[chunk] = [self._cached_block_id(h) for h in hashes[:num_held]]
            if num_held < stored.num_blocks:
                missing.append((chunk, stored, num_held))
        num_fresh = sum(stored.num_blocks - num_held for _, stored, num_held in missing)
        fresh_id = f"{holder_id}:fresh"
        fresh_ids = kv.allocate_held(fresh_id, num_fresh) if num_fresh else []
        block_ids = None
        host_hashes = [h for _, stored, held in missing for h in self._host_hits(stored, held)]
        offloader = kv.offloader
        if host_hashes and offloader is not None:
            offloader.pin_host_hits(host_hashes)  # no allocation below may evict them
        if fresh_ids is not None:
            num_new = request.num_tokens - prefix.num_tokens
            block_ids = kv.allocate_slots(request, num_new, prefix)
        if block_ids is None:
            for hold_id in hold_ids:
                kv.release_held(hold_id)
            kv.release_held(fresh_id)
            return None
        assert fresh_ids is not None  # else block_ids stayed None above
        if num_fresh:
            hold_ids.append(fresh_id)
        self._holder_ids.extend(hold_ids)
        fresh_hashes = []
        missing_count = len(missing)
        for chunk, stored, num_held in missing:
            taken = fresh_ids[: stored.num_blocks - num_held]
            del fresh_ids[: len(taken)]
            source_blocks[chunk] += taken
            fresh_hashes += stored.key.block_hashes[num_held : stored.num_blocks]
            loaded = self._host_hits(stored, num_held)
            if loaded:  # copied host -> device before the step (the step's KVTransferPlan)
                assert offloader is not None
                held_blocks = [kv.pool.blocks[block_id] for block_id in taken[: len(loaded)]]
                offloader.load_host_hits(loaded, held_blocks)
            num_cached = min(len(chunk), (num_held + len(loaded)) * bs)
            if num_cached < len(chunk):
                self._prefills.append(ChunkPrefill(list(chunk), source_blocks[chunk], num_cached))
                self.stats.num_chunk_prefill_tokens += len(chunk) - num_cached
            else:
                missing_count -= 1  # all of it came back from the host tier: a hit
        # Registered now (computed first thing in this step): a later request of this step
        # that names the chunk copies from these blocks.
        if num_fresh:
            kv.register_held_hashes(fresh_id, fresh_hashes)
        copies = [
            ChunkCopy(source_blocks[chunk], source, position, num, recompute)
            for chunk, source, position, num, recompute in draft.copies
        ]
        plan = BlendPlan(request.request_id, draft.start, draft.end, copies)
        self._blends[request.request_id] = plan
        request.rag_num_exact_tokens = copies[0].position // bs * bs
        stats = self.stats
        stats.num_chunk_misses += missing_count
        stats.num_chunk_hits += len(draft.chunks) - missing_count
        stats.num_blended_requests += 1
        stats.num_copied_tokens += plan.num_copied_tokens
        stats.num_recomputed_tokens += plan.num_recomputed_tokens
        return block_ids

    def take_plan(self) -> ChunkReusePlan | None:
        """The step's chunk work (None: none), for the SchedulerOutput."""
        if not self._blends and not self._prefills:
            return None
        plan = ChunkReusePlan(self._prefills, self._blends)
        self._prefills, self._blends = [], {}
        return plan

    def unschedule(self, request_id: str) -> None:
        """A request admitted this step was preempted in the same step: drop its blend (its
        chunk prefills still run; their blocks are registered)."""
        self._blends.pop(request_id, None)

    def release_holds(self) -> None:
        """The step that read the held store blocks has run: they become evictable again."""
        for holder_id in self._holder_ids:
            self.kv.release_held(holder_id)
        self._holder_ids.clear()

    def cache_blocks(self, request: Request) -> None:
        """KVCacheManager.cache_blocks for a request, but a blended one registers only the
        blocks before its first copied token (the others hold approximate KV)."""
        num_exact = request.rag_num_exact_tokens
        if num_exact is None or request.num_computed_tokens <= num_exact:
            self.kv.cache_blocks(request)
            return
        num_computed = request.num_computed_tokens
        request.num_computed_tokens = num_exact
        try:
            self.kv.cache_blocks(request)
        finally:
            request.num_computed_tokens = num_computed

    def _look_up(self, token_ids: list[int], request: Request) -> _StoredChunk:
        key = _ChunkKey(token_ids, request)
        num_blocks = cdiv(len(token_ids), self.kv.block_size)
        hashes = self.kv.request_block_hashes(key, num_blocks)  # type: ignore[arg-type]
        num_hits = 0
        for block_hash in hashes:
            if self.kv.pool.lookup(block_hash) is None:
                break
            num_hits += 1
        host_hashes: list[bytes | int] = []
        if self.kv.offloader is not None and num_hits < num_blocks:
            # A disk read this starts fills the host tier for a later request; this one
            # computes the chunk rather than wait.
            host_hashes, _ = self.kv.offloader.match(hashes[num_hits:])
        return _StoredChunk(key, num_blocks, num_hits, host_hashes)

    @staticmethod
    def _host_hits(stored: _StoredChunk, num_held: int) -> list[bytes | int]:
        """The host-tier hits that follow the num_held device blocks admission holds (none when
        the device run changed since the lookup)."""
        return stored.host_hashes if num_held == stored.num_hit_blocks else []

    def _cached_block_id(self, block_hash: bytes | int) -> int:
        block = self.kv.pool.lookup(block_hash)
        assert block is not None, "a held chunk-store block lost its hash"
        return block.block_id
