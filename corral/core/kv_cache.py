"""KVCacheManager: per-request block tables over a BlockPool, with automatic prefix reuse."""

from __future__ import annotations

from typing import NamedTuple

from corral.core.block_hash import BLOCK_HASH_FNS, BlockHash
from corral.core.block_pool import BlockPool, KVBlock
from corral.request import Request


class PrefixMatch(NamedTuple):
    """Cached blocks covering a request's first num_tokens tokens (num_tokens = blocks * size)."""

    blocks: list[KVBlock]
    num_tokens: int


NO_MATCH = PrefixMatch([], 0)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Owns which KV blocks each request holds; knows nothing of tensors.

    A request's block table maps its token position p to slot (table[p // block_size], p %
    block_size). Full, computed blocks are registered under a chained hash of (parent hash, token
    ids, extra keys) so that later requests with the same prefix reuse them.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        prefix_hash: str = "sha256",
    ) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self._hash_fn = BLOCK_HASH_FNS[prefix_hash]
        self._req_blocks: dict[str, list[KVBlock]] = {}
        # How many leading blocks of each request are registered in the prefix cache.
        self._num_registered: dict[str, int] = {}
        # Prefix-cache statistics, counted by the scheduler once per admitted request.
        self.num_query_tokens = 0
        self.num_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests."""
        return self.pool.usage

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table (empty when it holds none)."""
        return [block.block_id for block in self._req_blocks.get(request_id, ())]

    def num_blocks_held(self, request_id: str) -> int:
        return len(self._req_blocks.get(request_id, ()))

    def match_prefix(self, request: Request) -> PrefixMatch:
        """Find the longest run of cached full blocks at the start of the request's tokens.

        Never covers the last token (it must be computed to produce logits), takes no reference
        (allocate_slots does), and returns NO_MATCH when caching is off or the request asks for
        prompt logprobs (which need every prompt position computed).
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return NO_MATCH
        max_num_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_hashes(request, max_num_blocks)
        hits: list[KVBlock] = []
        for block_hash in request.block_hashes[:max_num_blocks]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        return PrefixMatch(hits, len(hits) * self.block_size)

    def allocate_slots(
        self, request: Request, num_new_tokens: int, prefix: PrefixMatch | None = None
    ) -> list[int] | None:
        """Make room for num_new_tokens more tokens after the computed ones (and a prefix hit).

        Returns the ids of the blocks appended to the request's table (prefix hits first), or None,
        changing nothing, when the pool cannot supply them. Never raises for lack of space.
        """
        request_id = request.request_id
        held = self._req_blocks.get(request_id)
        hits = prefix.blocks if prefix else []
        if hits and held:
            raise RuntimeError(f"{request} already holds blocks; a prefix hit must come first")
        num_computed = request.num_computed_tokens + (prefix.num_tokens if prefix else 0)
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_needed = num_required - (len(held) if held else 0) - len(hits)
        if num_needed > self.pool.num_free_blocks - self.pool.evictable_count(hits):
            return None
        self.pool.touch(hits)
        new_blocks = self.pool.allocate(max(num_needed, 0))
        appended = hits + new_blocks
        if held is None:
            self._req_blocks[request_id] = appended
            self._num_registered[request_id] = len(hits)
        else:
            held.extend(appended)
        return [block.block_id for block in appended]

    def cache_blocks(self, request: Request) -> None:
        """Register the request's newly full and computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        blocks = self._req_blocks.get(request.request_id)
        if not blocks:
            return
        num_full = min(request.num_computed_tokens // self.block_size, len(blocks))
        start = self._num_registered[request.request_id]
        if num_full <= start:
            return
        self._extend_hashes(request, num_full)
        for index in range(start, num_full):
            self.pool.register(blocks[index], request.block_hashes[index])
        self._num_registered[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Return all the request's blocks (cached ones stay reusable until evicted)."""
        blocks = self._req_blocks.pop(request.request_id, None)
        self._num_registered.pop(request.request_id, None)
        if blocks:
            self.pool.release(reversed(blocks))

    def reset_prefix_cache(self) -> int:
        return self.pool.reset_prefix_cache()

    def check_integrity(self) -> None:
        """Assert free + cached-evictable + in-use == total, and that every block's reference count
        equals the number of block tables holding it. Raises AssertionError on a violation."""
        self.pool.check_integrity()
        holders: dict[int, int] = {}
        for request_id, blocks in self._req_blocks.items():
            ids = [block.block_id for block in blocks]
            if len(set(ids)) != len(ids):
                raise AssertionError(f"request {request_id!r} holds a block twice: {ids}")
            for block_id in ids:
                holders[block_id] = holders.get(block_id, 0) + 1
        for block in self.pool.blocks:
            if block.ref_count != holders.get(block.block_id, 0):
                raise AssertionError(
                    f"{block} is held by {holders.get(block.block_id, 0)} block tables"
                )

    def _extend_hashes(self, request: Request, num_blocks: int) -> None:
        hashes = request.block_hashes
        size = self.block_size
        tokens = request.all_token_ids
        extra = (request.adapter_id, request.cache_salt)
        has_extra = extra != (None, None)
        for index in range(len(hashes), num_blocks):
            parent: BlockHash | None = hashes[-1] if hashes else None
            block_extra = extra if (index == 0 and has_extra) else ()
            hashes.append(
                self._hash_fn(parent, tokens[index * size : (index + 1) * size], block_extra)
            )
