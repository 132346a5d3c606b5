"""KVCacheManager: per-request block tables over a BlockPool, with automatic prefix reuse."""

from __future__ import annotations

from typing import NamedTuple

from corral.core.block_hash import BLOCK_HASH_FNS, BlockHash, HashedTokens
from corral.core.block_pool import BlockPool, KVBlock
from corral.core.kv_events import KVEvent, KVEventBuffer
from corral.core.kv_holds import KVHolds
from corral.core.kv_offload import KVOffloader
from corral.core.kv_stats import KVCacheStats
from corral.core.kv_tiers import DiskTier, HostTier
from corral.core.kv_transfer import DiskReadResult, KVTransferPlan
from corral.request import Request


class PrefixMatch(NamedTuple):
    """Cached blocks covering a request's first num_tokens tokens: device blocks first, then
    blocks found in the host tier (host_hashes, loaded into new device blocks on allocation).
    waiting: further blocks are being read from disk; admitting later saves recomputing them."""

    blocks: list[KVBlock]
    num_tokens: int
    host_hashes: list[BlockHash] = []
    waiting: bool = False


NO_MATCH = PrefixMatch([], 0)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager(KVHolds):
    """Owns which KV blocks each request holds; knows nothing of tensors.

    A request's block table maps its token position p to slot (table[p // block_size], p %
    block_size). Full, computed blocks are registered under a chained hash of (parent hash, token
    ids, extra keys) so that later requests with the same prefix reuse them.
    """

    events: KVEventBuffer | None

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        enable_prefix_caching: bool = True,
        prefix_hash: str = "sha256",
        num_host_slots: int = 0,
        disk_tier: DiskTier | None = None,
        enable_kv_events: bool = False,
    ) -> None:
        self.block_size = block_size
        self.stats = KVCacheStats()
        self.pool = BlockPool(num_blocks, self.stats)
        # KV events (corral/core/kv_events.py): None, and no cost, unless enabled.
        self.events = KVEventBuffer(block_size) if enable_kv_events else None
        self.pool.events = self.events
        self.offloader: KVOffloader | None = None
        if num_host_slots > 0:
            self.offloader = KVOffloader(self.pool, HostTier(num_host_slots), disk_tier)
            if self.events is not None:  # a disk tier may start with files: stored events
                self.offloader.announce(self.events)
        elif disk_tier is not None:
            raise ValueError("a disk KV tier needs a host tier (host_cache_memory) above it")
        self.enable_prefix_caching = enable_prefix_caching
        self._hash_fn = BLOCK_HASH_FNS[prefix_hash]
        self._req_blocks: dict[str, list[KVBlock]] = {}
        # How many leading blocks of each request are registered in the prefix cache.
        self._num_registered: dict[str, int] = {}
        # Blocks held outside any request's table (KV transfer: leases, fetch targets).
        self._holds: dict[str, list[KVBlock]] = {}
        # Per request: the block index below which its non-sink blocks were dropped (windows),
        # and how many table entries are the null block.
        self._num_dropped_until: dict[str, int] = {}
        self._num_dropped: dict[str, int] = {}

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

    def request_ids(self) -> list[str]:
        """The requests that hold device blocks now."""
        return list(self._req_blocks)

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
        host_hashes: list[BlockHash] = []
        waiting = False
        if self.offloader is not None:
            host_hashes, waiting = self.offloader.match(
                request.block_hashes[len(hits) : max_num_blocks]
            )
        num_tokens = (len(hits) + len(host_hashes)) * self.block_size
        return PrefixMatch(hits, num_tokens, host_hashes, waiting)

    def allocate_slots(
        self, request: Request, num_new_tokens: int, prefix: PrefixMatch | None = None
    ) -> list[int] | None:
        """Make room for num_new_tokens more tokens after the computed ones (and a prefix hit).

        Returns the ids of the blocks appended to the request's table (prefix hits first), or None,
        changing nothing, when the pool cannot supply them. Never raises for lack of space.
        """
        request_id = request.request_id
        held = self._req_blocks.get(request_id)
        if prefix is None and held is not None:
            # A running request whose new tokens fit in the blocks it holds (most decodes).
            num_required = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size)
            if num_required <= len(held):
                return []
        hits = prefix.blocks if prefix else []
        if hits and held:
            raise RuntimeError(f"{request} already holds blocks; a prefix hit must come first")
        num_computed = request.num_computed_tokens + (prefix.num_tokens if prefix else 0)
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_needed = num_required - (len(held) if held else 0) - len(hits)
        if num_needed > self.pool.num_free_blocks - self.pool.evictable_count(hits):
            return None
        host_hashes = prefix.host_hashes if prefix else []
        offloader = self.offloader
        if host_hashes:
            assert offloader is not None
            offloader.pin_host_hits(host_hashes)
        self.pool.touch(hits)
        new_blocks = self.pool.allocate(max(num_needed, 0))
        if host_hashes:
            assert offloader is not None
            offloader.load_host_hits(host_hashes, new_blocks[: len(host_hashes)])
            if self.events is not None:  # fresh blocks: those holding their hash were loaded
                loaded = [block.block_hash == h for block, h in zip(new_blocks, host_hashes)]
                self._record_stored(request, len(hits), loaded)
        appended = hits + new_blocks
        if held is None:
            self._req_blocks[request_id] = appended
            self._num_registered[request_id] = len(hits) + len(host_hashes)
        else:
            held.extend(appended)
        return [block.block_id for block in appended]

    def request_block_hashes(self, request: Request, num_blocks: int) -> list[BlockHash]:
        """The chained hashes of the request's first num_blocks blocks."""
        self._extend_hashes(request, num_blocks)
        return list(request.block_hashes[:num_blocks])

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
        if self.events is None:
            for index in range(start, num_full):
                self.pool.register(blocks[index], request.block_hashes[index])
        else:
            # register() is True for a block registered now, False when another block holds
            # the hash (a block registered before already holds it, and is skipped).
            registered = [
                blocks[index].block_hash is None
                and self.pool.register(blocks[index], request.block_hashes[index])
                for index in range(start, num_full)
            ]
            self._record_stored(request, start, registered)
        self._num_registered[request.request_id] = num_full

    def free_excess_blocks(self, request: Request, num_tokens: int) -> bool:
        """Return the request's blocks beyond the first cdiv(num_tokens, block_size): they hold
        only tokens that were given up (rejected draft tokens), never prefix-cached ones.
        True when some were freed."""
        blocks = self._req_blocks.get(request.request_id)
        if not blocks:
            return False
        num_keep = cdiv(num_tokens, self.block_size)
        if len(blocks) <= num_keep:
            return False
        if num_keep < self._num_registered[request.request_id]:
            raise RuntimeError(f"{request}: would free registered blocks (keep {num_keep})")
        excess = blocks[num_keep:]
        del blocks[num_keep:]
        self.pool.release(reversed(excess))
        return True

    def reserve_null_block(self) -> None:
        """Make drop_blocks possible (bounded attention windows): one block leaves the pool."""
        self.pool.reserve_null_block()

    def drop_blocks(self, request: Request, first_live_position: int, num_kept_blocks: int) -> int:
        """Release the request's blocks that lie wholly below first_live_position, except its
        first num_kept_blocks (attention sinks), putting the null block in their places; their
        prefix-cache registration stays (other requests may still hit them). Returns how many
        blocks were released. Needs reserve_null_block()."""
        request_id = request.request_id
        blocks = self._req_blocks.get(request_id)
        null = self.pool.null_block
        if not blocks or null is None:
            return 0
        start = max(self._num_dropped_until.get(request_id, 0), num_kept_blocks)
        stop = min(first_live_position // self.block_size, len(blocks))
        if self.enable_prefix_caching:  # a dropped block must be registered already, if ever
            stop = min(stop, self._num_registered.get(request_id, 0))
        if stop <= start:
            return 0
        dead = blocks[start:stop]
        blocks[start:stop] = [null] * (stop - start)
        self._num_dropped_until[request_id] = stop
        self._num_dropped[request_id] = self._num_dropped.get(request_id, 0) + len(dead)
        self.pool.release(reversed(dead))
        return len(dead)

    def num_live_blocks(self, request_id: str) -> int:
        """Blocks the request holds for real (its table less dropped positions)."""
        num_held = len(self._req_blocks.get(request_id, ()))
        return num_held - self._num_dropped.get(request_id, 0)

    def num_live_slots_after(self, request: Request, num_new_tokens: int) -> int:
        """The KV slots the request holds for real once num_new_tokens more are computed."""
        num_dropped = self._num_dropped.get(request.request_id, 0)
        num_total = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size)
        return (num_total - num_dropped) * self.block_size

    def free(self, request: Request) -> None:
        """Return all the request's blocks (cached ones stay reusable until evicted), and any
        host slots holding it swapped out."""
        self._release_device(request.request_id)
        if self.offloader is not None:
            self.offloader.drop_swapped(request.request_id)

    def _release_device(self, request_id: str) -> None:
        blocks = self._req_blocks.pop(request_id, None)
        self._num_registered.pop(request_id, None)
        self._num_dropped_until.pop(request_id, None)
        self._num_dropped.pop(request_id, None)
        if blocks:
            self.pool.release(reversed(blocks))

    # ----- swapping (preemption mode "swap") -------------------------------------------------

    def swap_out(self, request: Request) -> bool:
        """Move a running request's blocks to the host tier and free them on the device.
        False, changing nothing, when there is no host tier or it has no room."""
        blocks = self._req_blocks.get(request.request_id)
        if self.offloader is None or not blocks or request.request_id in self._num_dropped_until:
            return False  # a table with dropped positions is recomputed instead
        if not self.offloader.swap_out(request.request_id, blocks):
            return False
        self._release_device(request.request_id)
        return True

    def is_swapped(self, request: Request) -> bool:
        return self.offloader is not None and self.offloader.is_swapped(request.request_id)

    def swap_in(self, request: Request, num_new_tokens: int) -> list[int] | None:
        """Bring a swapped request back with room for num_new_tokens more; its block table (in
        new device blocks) or None, changing nothing, when the pool is short."""
        assert self.offloader is not None
        num_swapped = self.offloader.num_swapped_blocks(request.request_id)
        total = request.num_computed_tokens + num_new_tokens
        num_needed = max(cdiv(total, self.block_size), num_swapped)
        if num_needed > self.pool.num_free_blocks:
            return None
        blocks = self.pool.allocate(num_needed)
        self.offloader.swap_in(request.request_id, blocks)
        self._req_blocks[request.request_id] = blocks
        self._num_registered[request.request_id] = 0
        return [block.block_id for block in blocks]

    # ----- lower tiers -------------------------------------------------------------------------

    def take_transfer_plan(self) -> KVTransferPlan | None:
        """The block copies ordered since the last call (the executor runs them first)."""
        return self.offloader.take_plan() if self.offloader is not None else None

    def finish_disk_reads(self, results: list[DiskReadResult]) -> None:
        if self.offloader is not None and results:
            self.offloader.finish_disk_reads(results)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block no request holds; returns how many were dropped. The host
        and disk tiers keep theirs: after an AllBlocksCleared event they are stored again."""
        dropped = self.pool.reset_prefix_cache()
        is_cleared = self.pool.num_cached_blocks == 0  # then the pool recorded AllBlocksCleared
        if self.events is not None and self.offloader is not None and is_cleared:
            self.offloader.announce(self.events)
        return dropped

    def take_kv_events(self) -> list[KVEvent]:
        """The KV events since the last call (empty when they are off)."""
        return self.events.take() if self.events is not None else []

    def _record_stored(self, request: Request, first_index: int, registered: list[bool]) -> None:
        """Record the request's blocks first_index + i with registered[i] (entered the prefix
        cache just now) as BlockStored events, one per consecutive run."""
        assert self.events is not None
        hashes, tokens = request.block_hashes, request.all_token_ids
        lora_name = request.lora.name if request.lora is not None else request.adapter_id
        run_start = first_index
        for offset, is_new in enumerate(registered):
            if not is_new:
                index = first_index + offset
                self.events.record_stored(hashes, run_start, index, tokens, lora_name)
                run_start = index + 1
        stop = first_index + len(registered)
        self.events.record_stored(hashes, run_start, stop, tokens, lora_name)

    def check_integrity(self) -> None:
        """Assert free + cached-evictable + in-use == total, and that every block's reference count
        equals the number of block tables holding it. Raises AssertionError on a violation."""
        self.pool.check_integrity()
        if self.offloader is not None:
            self.offloader.check_integrity()
        holders: dict[int, int] = {}
        for request_id, blocks in (*self._req_blocks.items(), *self._holds.items()):
            ids = [block.block_id for block in blocks if block is not self.pool.null_block]
            if len(set(ids)) != len(ids):
                raise AssertionError(f"request {request_id!r} holds a block twice: {ids}")
            for block_id in ids:
                holders[block_id] = holders.get(block_id, 0) + 1
        for block in self.pool.blocks:
            if block is self.pool.null_block:
                continue
            if block.ref_count != holders.get(block.block_id, 0):
                raise AssertionError(
                    f"{block} is held by {holders.get(block.block_id, 0)} block tables"
                )

    def _extend_hashes(self, request: HashedTokens, num_blocks: int) -> None:
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
