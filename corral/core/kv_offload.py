"""KVOffloader: the KV manager's lower tiers. It plans spills (device -> host -> disk), lower-tier
prefix hits (disk -> host asynchronously, host -> device), and swaps of preempted requests."""

from __future__ import annotations

from corral.core.block_hash import BlockHash
from corral.core.block_pool import BlockPool, KVBlock
from corral.core.kv_events import KVEventBuffer
from corral.core.kv_tiers import DiskTier, HostTier
from corral.core.kv_transfer import DiskReadResult, KVTransferPlan


class KVOffloader:
    def __init__(self, pool: BlockPool, host: HostTier, disk: DiskTier | None) -> None:
        self.pool = pool
        self.host = host
        self.disk = disk
        self.plan = KVTransferPlan()
        if disk is not None:
            self.plan.disk_deletes.extend(disk.evicted_on_start)
        pool.evict_listener = self.on_device_evict
        self.stats = pool.stats

    def announce(self, events: KVEventBuffer) -> None:
        """Record the tiers' KV events into `events`, starting with what they hold now."""
        self.host.announce(events)
        if self.disk is not None:
            self.disk.announce(events)

    def take_plan(self) -> KVTransferPlan:
        """This step's transfers; a new step starts (slots used by it may be reused after)."""
        plan, self.plan = self.plan, KVTransferPlan()
        self.host.new_step()
        return plan

    # ----- spills --------------------------------------------------------------------------

    def on_device_evict(self, block_id: int, block_hash: BlockHash) -> None:
        """A cached device block is about to be reused: keep its contents in the host tier."""
        host = self.host
        if host.lookup(block_hash) is not None or host.is_pending(block_hash):
            return
        if self.disk is not None and block_hash in self.disk:
            self.disk.touch(block_hash)
            return
        slot = self._take_host_slot()
        if slot is None:
            return
        self.plan.saves.append((block_id, slot))
        host.cache(block_hash, slot)
        self.stats.host_saves += 1

    def _take_host_slot(self) -> int | None:
        taken = self.host.take_slot()
        if taken is None:
            return None
        slot, evicted = taken
        if evicted is not None:
            self._spill_to_disk(*evicted)
        return slot

    def _spill_to_disk(self, block_hash: BlockHash, slot: int) -> None:
        if self.disk is None or self.disk.max_blocks == 0:
            return
        if block_hash in self.disk:
            self.disk.touch(block_hash)
            return
        self.plan.disk_writes.append((slot, block_hash))
        self.plan.disk_deletes.extend(self.disk.add(block_hash))
        self.stats.disk_writes += 1

    # ----- lower-tier prefix hits ----------------------------------------------------------

    def match(self, hashes: list[BlockHash]) -> tuple[list[BlockHash], bool]:
        """Continue a prefix match below the device pool: (host hits in order, waiting). waiting
        is True when some following blocks are being read from disk (disk reads were started
        now or earlier): the request should wait for them rather than recompute."""
        host_hits: list[BlockHash] = []
        for index, block_hash in enumerate(hashes):
            if self.host.lookup(block_hash) is not None:
                # Pinned for this step, so that disk reads below cannot evict it.
                self.host.touch(block_hash)
                host_hits.append(block_hash)
                continue
            if self.host.is_pending(block_hash):
                return host_hits, True
            if self.disk is not None and block_hash in self.disk:
                return host_hits, self._start_disk_reads(hashes[index:])
            break
        return host_hits, False

    def _start_disk_reads(self, hashes: list[BlockHash]) -> bool:
        """Start disk -> host reads for the leading run of these hashes found on disk. False when
        none could start (no host slot free of this step's work): then nothing is worth waiting
        for, and the rest of the prefix is recomputed."""
        started = False
        for block_hash in hashes:
            if self.disk is None or block_hash not in self.disk:
                break
            if self.host.is_pending(block_hash) or self.host.lookup(block_hash) is not None:
                continue
            slot = self._take_host_slot()
            if slot is None:
                break
            self.disk.touch(block_hash)
            self.host.begin_pending(block_hash, slot)
            self.plan.disk_reads.append((block_hash, slot))
            self.stats.disk_reads += 1
            started = True
        return started

    def finish_disk_reads(self, results: list[DiskReadResult]) -> None:
        for result in results:
            self.host.finish_pending(result.block_hash, result.ok)
            if not result.ok and self.disk is not None:
                self.disk.discard(result.block_hash)  # missing or corrupt: never served
                self.stats.failed_disk_reads += 1

    def load_host_hits(self, hashes: list[BlockHash], blocks: list[KVBlock]) -> None:
        """Copy host-tier hits into freshly allocated device blocks (same order)."""
        for block_hash, block in zip(hashes, blocks, strict=True):
            self.plan.loads.append((self.host.touch(block_hash), block.block_id))
            self.pool.register(block, block_hash)
            self.stats.host_loads += 1

    def pin_host_hits(self, hashes: list[BlockHash]) -> None:
        """Keep these host entries from being evicted by allocations later this step."""
        for block_hash in hashes:
            self.host.touch(block_hash)

    # ----- swap preemption -----------------------------------------------------------------

    def swap_out(self, request_id: str, blocks: list[KVBlock]) -> bool:
        """Copy a preempted request's blocks to host slots. False (nothing done) if they do not
        fit; the caller then preempts by recompute."""
        if self.host.num_available() < len(blocks):
            return False
        slots = []
        for block in blocks:
            slot = self._take_host_slot()
            assert slot is not None
            self.plan.saves.append((block.block_id, slot))
            slots.append(slot)
        self.host.hold_swapped(request_id, slots)
        self.stats.swap_outs += 1
        return True

    def swap_in(self, request_id: str, blocks: list[KVBlock]) -> None:
        slots = self.host.drop_swapped(request_id, after_this_step=True)
        for slot, block in zip(slots, blocks):
            self.plan.loads.append((slot, block.block_id))

    def is_swapped(self, request_id: str) -> bool:
        return self.host.swapped_slots(request_id) is not None

    def num_swapped_blocks(self, request_id: str) -> int:
        return len(self.host.swapped_slots(request_id) or ())

    def drop_swapped(self, request_id: str) -> None:
        self.host.drop_swapped(request_id)

    def check_integrity(self) -> None:
        self.host.check_integrity()
        if self.disk is not None:
            self.disk.check_integrity()
