"""Lower KV tiers below the device pool: host memory and disk, each with its own LRU.

Only metadata lives here (which block hash sits in which host slot or disk file); the executor's
KVStorage moves the bytes. Every host slot is in exactly one state: free, cached (an LRU entry
keyed by block hash), pending (a disk read in flight), or swapped (holding a preempted request's
block).

With a KVEventBuffer attached (announce), each tier records its cached entries coming and going
as KV events of its medium (corral/core/kv_events.py): pending and swapped host slots are not
cached entries and are not reported.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from corral.core.block_hash import BlockHash
from corral.core.kv_events import MEDIUM_DISK, MEDIUM_HOST, KVEventBuffer


class HostTier:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._free: list[int] = list(range(num_slots - 1, -1, -1))
        self._cached: OrderedDict[BlockHash, int] = OrderedDict()  # LRU first
        self._pending: dict[BlockHash, int] = {}
        self._swapped: dict[str, list[int]] = {}
        # Slots read or written this step: never evicted until the plan has run.
        self._busy: set[int] = set()
        # Swapped-in slots: read by this step's loads, so free only from the next step on.
        self._freed_next_step: list[int] = []
        self.events: KVEventBuffer | None = None

    def announce(self, events: KVEventBuffer) -> None:
        """Record KV events into `events` from now on, starting with every cached entry."""
        self.events = events
        for block_hash in self._cached:
            events.record_tier_stored(block_hash, MEDIUM_HOST)

    @property
    def num_free_slots(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def new_step(self) -> None:
        self._busy.clear()
        self._free.extend(self._freed_next_step)
        self._freed_next_step.clear()

    def lookup(self, block_hash: BlockHash) -> int | None:
        return self._cached.get(block_hash)

    def is_pending(self, block_hash: BlockHash) -> bool:
        return block_hash in self._pending

    def touch(self, block_hash: BlockHash) -> int:
        """Mark a cached entry used (most recent) and busy this step; returns its slot."""
        self._cached.move_to_end(block_hash)
        slot = self._cached[block_hash]
        self._busy.add(slot)
        return slot

    def take_slot(self) -> tuple[int, tuple[BlockHash, int] | None] | None:
        """A slot for new data: a free one, else the LRU cached entry's (returned as evicted so
        the caller can spill it). None when every slot is busy, pending or swapped."""
        if self._free:
            slot = self._free.pop()
            self._busy.add(slot)
            return slot, None
        for block_hash, slot in self._cached.items():
            if slot not in self._busy:
                del self._cached[block_hash]
                if self.events is not None:
                    self.events.record_removed(block_hash, MEDIUM_HOST)
                self._busy.add(slot)
                return slot, (block_hash, slot)
        return None

    def cache(self, block_hash: BlockHash, slot: int) -> None:
        self._cached[block_hash] = slot
        if self.events is not None:
            self.events.record_tier_stored(block_hash, MEDIUM_HOST)

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def begin_pending(self, block_hash: BlockHash, slot: int) -> None:
        self._pending[block_hash] = slot

    def finish_pending(self, block_hash: BlockHash, ok: bool) -> None:
        slot = self._pending.pop(block_hash, None)
        if slot is None:
            return
        if ok:
            self.cache(block_hash, slot)
        else:
            self._free.append(slot)

    def num_available(self) -> int:
        """Slots that take_slot could hand out now."""
        return len(self._free) + sum(1 for s in self._cached.values() if s not in self._busy)

    def hold_swapped(self, request_id: str, slots: list[int]) -> None:
        self._swapped[request_id] = slots

    def swapped_slots(self, request_id: str) -> list[int] | None:
        return self._swapped.get(request_id)

    def drop_swapped(self, request_id: str, *, after_this_step: bool = False) -> list[int]:
        slots = self._swapped.pop(request_id, [])
        (self._freed_next_step if after_this_step else self._free).extend(slots)
        return slots

    def check_integrity(self) -> tuple[int, int, int, int]:
        """Every slot in exactly one state; returns (free, cached, pending, swapped)."""
        seen: dict[int, str] = {}
        groups: list[tuple[str, Iterable[int]]] = [
            ("free", [*self._free, *self._freed_next_step]),
            ("cached", self._cached.values()),
            ("pending", self._pending.values()),
            ("swapped", (s for slots in self._swapped.values() for s in slots)),
        ]
        counts = []
        for name, slots in groups:
            count = 0
            for slot in slots:
                if slot in seen:
                    raise AssertionError(f"host slot {slot} is both {seen[slot]} and {name}")
                if not 0 <= slot < self.num_slots:
                    raise AssertionError(f"host slot {slot} is out of range")
                seen[slot] = name
                count += 1
            counts.append(count)
        if len(seen) != self.num_slots:
            raise AssertionError(f"{self.num_slots - len(seen)} host slots are in no state")
        return counts[0], counts[1], counts[2], counts[3]


class DiskTier:
    """Which block hashes have a file on disk, LRU-ordered, bounded by a byte budget.

    probe (a shared directory): asked about a hash this tier has no entry for; True when another
    engine wrote its file since, which is then adopted as an entry (its reads are checked as
    every read is; a file deleted meanwhile is a failed read, recomputed)."""

    def __init__(
        self,
        max_bytes: int,
        block_bytes: int,
        existing: Iterable[BlockHash] = (),
        probe: Callable[[BlockHash], bool] | None = None,
    ):
        self.block_bytes = block_bytes
        self.probe = probe
        self.num_adopted = 0
        self.max_blocks = max(0, max_bytes // block_bytes)
        self._entries: OrderedDict[BlockHash, None] = OrderedDict()
        for block_hash in existing:  # oldest first
            self._entries[block_hash] = None
        self.events: KVEventBuffer | None = None
        self.evicted_on_start = self._trim()

    def announce(self, events: KVEventBuffer) -> None:
        """Record KV events into `events` from now on, starting with every entry."""
        self.events = events
        for block_hash in self._entries:
            events.record_tier_stored(block_hash, MEDIUM_DISK)

    @property
    def num_blocks(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: object) -> bool:
        if block_hash in self._entries:
            return True
        if self.probe is None or not isinstance(block_hash, bytes | int):
            return False
        if not self.probe(block_hash):
            return False
        self._entries[block_hash] = None  # another engine's file: the budget trims at next add
        self.num_adopted += 1
        if self.events is not None:
            self.events.record_tier_stored(block_hash, MEDIUM_DISK)
        return True

    def touch(self, block_hash: BlockHash) -> None:
        self._entries.move_to_end(block_hash)

    def add(self, block_hash: BlockHash) -> list[BlockHash]:
        """Record a new file; returns the LRU hashes to delete to stay within the budget."""
        if block_hash in self._entries:
            self._entries.move_to_end(block_hash)
        else:
            self._entries[block_hash] = None
            if self.events is not None:
                self.events.record_tier_stored(block_hash, MEDIUM_DISK)
        return self._trim()

    def discard(self, block_hash: BlockHash) -> None:
        if block_hash not in self._entries:
            return
        del self._entries[block_hash]
        if self.events is not None:
            self.events.record_removed(block_hash, MEDIUM_DISK)

    def _trim(self) -> list[BlockHash]:
        evicted = []
        while len(self._entries) > self.max_blocks:
            block_hash, _ = self._entries.popitem(last=False)
            evicted.append(block_hash)
            if self.events is not None:
                self.events.record_removed(block_hash, MEDIUM_DISK)
        return evicted

    def check_integrity(self) -> None:
        if len(self._entries) > self.max_blocks:
            raise AssertionError(
                f"disk tier holds {len(self._entries)} blocks over its {self.max_blocks}"
            )
