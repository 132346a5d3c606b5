"""BlockPool: fixed-size KV blocks, reference counts, and an O(1) LRU of reusable blocks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from corral.core.kv_events import KVEventBuffer
from corral.core.kv_stats import KVCacheStats


class KVBlock:
    """One block of block_size token slots in the device KV cache."""

    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        # Set while the block is registered in the prefix cache under this hash.
        self.block_hash: bytes | int | None = None

    def __repr__(self) -> str:
        return (
            f"KVBlock({self.block_id}, ref={self.ref_count}, cached={self.block_hash is not None})"
        )


class BlockPool:
    """All blocks of one KV cache, in exactly one of three states.

    - free: ref_count 0, no hash, in the free queue;
    - cached-evictable: ref_count 0, registered under a hash, in the free queue (reusable on a hit,
      evicted when the queue hands it out);
    - in use: ref_count > 0, not in the free queue (may also be registered under a hash).

    The free queue is ordered least recently freed first; allocation takes from the front, so a
    cached block is evicted in LRU order. All operations are O(1) per block.
    """

    def __init__(self, num_blocks: int, stats: KVCacheStats | None = None) -> None:
        if num_blocks < 1:
            raise ValueError(f"a block pool needs at least 1 block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free_queue: OrderedDict[int, KVBlock] = OrderedDict(
            (block.block_id, block) for block in self.blocks
        )
        self._cached: dict[bytes | int, KVBlock] = {}
        self.stats = stats if stats is not None else KVCacheStats()
        # Called with (block_id, block_hash) just before a cached block's hash is dropped on
        # reuse, so its contents can be saved to a lower tier first.
        self.evict_listener: Callable[[int, bytes | int], None] | None = None
        # Records removals (evictions, resets) when KV events are on (KVCacheManager sets it).
        self.events: KVEventBuffer | None = None
        # Stands in block tables for dropped positions (reserve_null_block); never released.
        self.null_block: KVBlock | None = None

    @property
    def num_free_blocks(self) -> int:
        """Blocks with no reference: truly free plus cached-evictable."""
        return len(self._free_queue)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (referenced by a request)."""
        return 1.0 - len(self._free_queue) / self.num_blocks

    def allocate(self, num_blocks: int) -> list[KVBlock]:
        """Take num_blocks from the front of the free queue, evicting any cached ones."""
        if num_blocks > len(self._free_queue):
            raise RuntimeError(f"asked for {num_blocks} blocks with {len(self._free_queue)} free")
        blocks = []
        for _ in range(num_blocks):
            _, block = self._free_queue.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_count = 1
            blocks.append(block)
        return blocks

    def reserve_null_block(self) -> KVBlock:
        """Take one free block out of circulation for good (idempotent): it stands in block
        tables for token positions whose KV was dropped (corral/core/kv_window.py), so that
        later positions keep their block indices. What it holds is never read unmasked."""
        if self.null_block is None:
            if not self._free_queue:
                raise RuntimeError("no free block to reserve as the null block")
            _, block = self._free_queue.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_count = 1
            self.null_block = block
            self.num_blocks -= 1  # the blocks that hold KV
        return self.null_block

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add a reference to prefix-cache hits, taking evictable ones out of the free queue."""
        for block in blocks:
            if block is self.null_block:
                continue
            if block.ref_count == 0:
                del self._free_queue[block.block_id]
            block.ref_count += 1

    def release(self, blocks: Iterable[KVBlock]) -> None:
        """Drop a reference from each block; unreferenced ones join the free queue's tail.

        Callers pass a request's blocks last-first, so that its later blocks (shared by fewer
        requests) are evicted before its earlier ones.
        """
        for block in blocks:
            if block is self.null_block:
                continue
            if block.ref_count <= 0:
                raise RuntimeError(f"releasing {block} which has no reference")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free_queue[block.block_id] = block

    def lookup(self, block_hash: bytes | int) -> KVBlock | None:
        return self._cached.get(block_hash)

    def register(self, block: KVBlock, block_hash: bytes | int) -> bool:
        """Register a full, computed block under its hash. False if another block holds it."""
        if block.block_hash is not None:
            return block.block_hash == block_hash
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True

    def evictable_count(self, blocks: Iterable[KVBlock]) -> int:
        """How many of these blocks currently sit in the free queue."""
        return sum(1 for block in blocks if block.ref_count == 0)

    def reset_prefix_cache(self) -> int:
        """Forget every cached-evictable block's hash. Returns how many were dropped."""
        dropped = 0
        for block in list(self._cached.values()):
            if block.ref_count == 0:
                self._evict(block, notify=False)
                dropped += 1
        if self.events is not None and not self._cached:
            self.events.record_cleared()
        return dropped

    def _evict(self, block: KVBlock, *, notify: bool = True) -> None:
        assert block.block_hash is not None
        # Removal first: the listener's host copy is then the block's last event.
        if self.events is not None:
            self.events.record_removed(block.block_hash)
        if notify and self.evict_listener is not None:
            self.evict_listener(block.block_id, block.block_hash)
        del self._cached[block.block_hash]
        block.block_hash = None
        self.stats.prefix_cache_evictions += 1

    def check_integrity(self) -> tuple[int, int, int]:
        """Check the state invariant; returns (num_free, num_cached_evictable, num_in_use).

        Raises AssertionError naming the first violation.
        """
        num_free = num_evictable = num_in_use = 0
        for block in self.blocks:
            if block is self.null_block:
                continue
            in_queue = block.block_id in self._free_queue
            if block.ref_count < 0:
                raise AssertionError(f"{block} has a negative reference count")
            if block.ref_count == 0:
                if not in_queue:
                    raise AssertionError(f"{block} is unreferenced but not in the free queue")
                if block.block_hash is None:
                    num_free += 1
                else:
                    num_evictable += 1
            else:
                if in_queue:
                    raise AssertionError(f"{block} is referenced but in the free queue")
                num_in_use += 1
            if block.block_hash is not None and self._cached.get(block.block_hash) is not block:
                raise AssertionError(f"{block} has a hash that does not map back to it")
        for block_hash, block in self._cached.items():
            if block.block_hash != block_hash:
                raise AssertionError(f"hash table entry maps to {block} with another hash")
        if len(self._free_queue) != num_free + num_evictable:
            raise AssertionError("the free queue holds blocks twice or unknown blocks")
        if num_free + num_evictable + num_in_use != self.num_blocks:
            raise AssertionError(
                f"free {num_free} + cached-evictable {num_evictable} + in-use {num_in_use} "
                f"!= total {self.num_blocks}"
            )
        return num_free, num_evictable, num_in_use
