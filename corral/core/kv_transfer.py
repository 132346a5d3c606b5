"""KVTransferPlan: the block copies the KV manager orders for one step (torch-free message).

The executor carries them out before the forward pass, in this order:
1. disk_writes (host slot -> file, data copied out first, written in the background),
2. saves (device block -> host slot: prefix-cache spills and swap-outs),
3. loads (host slot -> device block: lower-tier prefix hits and swap-ins),
4. disk_reads (file -> host slot, asynchronous; reported done in a later ModelOutput),
5. disk_deletes (files evicted from the disk tier).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.core.block_hash import BlockHash


@dataclass(slots=True)
class KVTransferPlan:
    disk_writes: list[tuple[int, BlockHash]] = field(default_factory=list)
    saves: list[tuple[int, int]] = field(default_factory=list)  # (device block, host slot)
    loads: list[tuple[int, int]] = field(default_factory=list)  # (host slot, device block)
    disk_reads: list[tuple[BlockHash, int]] = field(default_factory=list)  # (hash, host slot)
    disk_deletes: list[BlockHash] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.disk_writes or self.saves or self.loads or self.disk_reads or self.disk_deletes
        )


@dataclass(frozen=True, slots=True)
class DiskReadResult:
    """A finished disk -> host read: ok False when the file was missing or corrupt."""

    block_hash: BlockHash
    host_slot: int
    ok: bool
