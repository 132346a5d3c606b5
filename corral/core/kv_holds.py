"""KV blocks held outside any request's block table (KV transfer leases and fetch targets,
session pins): the KVCacheManager's holds, in their own module."""

from __future__ import annotations

from corral.core.block_hash import BlockHash, HashedTokens
from corral.core.block_pool import BlockPool, KVBlock
from corral.request import Request


class KVHolds:
    """Mixed into KVCacheManager, whose _holds, _req_blocks and pool these methods use."""

    pool: BlockPool
    enable_prefix_caching: bool
    _holds: dict[str, list[KVBlock]]
    _req_blocks: dict[str, list[KVBlock]]
    _num_registered: dict[str, int]
    events: object | None

    def _extend_hashes(self, request: HashedTokens, num_blocks: int) -> None:
        raise NotImplementedError

    def _record_stored(self, request: Request, first_index: int, registered: list[bool]) -> None:
        raise NotImplementedError

    def hold_request_blocks(
        self, holder_id: str, request: Request, num_blocks: int, first_block: int = 0
    ) -> list[int]:
        """Add a reference to the request's blocks [first_block, num_blocks) under holder_id
        (they outlive the request until release_held). Returns their ids."""
        blocks = self._req_blocks.get(request.request_id, [])[first_block:num_blocks]
        if len(blocks) < num_blocks - first_block:
            raise RuntimeError(f"{request} holds {len(blocks)} blocks, not {num_blocks}")
        self._add_hold(holder_id, blocks)
        self.pool.touch(blocks)
        return [block.block_id for block in blocks]

    def allocate_held(self, holder_id: str, num_blocks: int) -> list[int] | None:
        """num_blocks fresh blocks held under holder_id, or None when the pool lacks them."""
        if holder_id in self._holds:  # refused before any block is taken
            raise ValueError(f"{holder_id!r} already holds blocks")
        if num_blocks > self.pool.num_free_blocks:
            return None
        blocks = self.pool.allocate(num_blocks)
        self._holds[holder_id] = blocks
        return [block.block_id for block in blocks]

    def register_held(self, holder_id: str, request: Request, first_block: int = 0) -> None:
        """Register held blocks (filled with the KV of the request's blocks from first_block
        on, in order) in the prefix cache under the request's block hashes."""
        blocks = self._holds[holder_id]
        self._extend_hashes(request, first_block + len(blocks))
        registered = [
            block.block_hash is None and self.pool.register(block, block_hash)
            for block, block_hash in zip(blocks, request.block_hashes[first_block:])
        ]
        if self.events is not None:
            self._record_stored(request, first_block, registered)

    def register_held_hashes(self, holder_id: str, block_hashes: list[BlockHash]) -> None:
        """Register held blocks under the given hashes (a prefetch: no request of this engine
        holds these tokens yet; no KV event is recorded for them)."""
        for block, block_hash in zip(self._holds[holder_id], block_hashes):
            if block.block_hash is None:
                self.pool.register(block, block_hash)

    def hold_cached_prefix(self, holder_id: str, request: HashedTokens, max_num_blocks: int) -> int:
        """Hold, under holder_id, the leading run of the request's first max_num_blocks blocks
        that the device prefix cache has (no host or disk tier consulted), so that nothing
        evicts them before the request is admitted; returns how many (0: nothing held)."""
        if not self.enable_prefix_caching:
            return 0
        self._extend_hashes(request, max_num_blocks)
        hits = []
        for block_hash in request.block_hashes[:max_num_blocks]:
            block = self.pool.lookup(block_hash)
            if block is None:
                break
            hits.append(block)
        if hits:
            self._add_hold(holder_id, hits)
            self.pool.touch(hits)
        return len(hits)

    def num_cached_blocks(self, request_id: str) -> int:
        """How many of the request's leading blocks are registered in the prefix cache."""
        return self._num_registered.get(request_id, 0)

    def release_held(self, holder_id: str) -> None:
        """Drop holder_id's references (unknown ids are ignored)."""
        blocks = self._holds.pop(holder_id, None)
        if blocks:
            self.pool.release(reversed(blocks))

    def _add_hold(self, holder_id: str, blocks: list[KVBlock]) -> None:
        if holder_id in self._holds:
            raise ValueError(f"{holder_id!r} already holds blocks")
        self._holds[holder_id] = list(blocks)
