"""Which LoRA adapters sit in the compute pool's slots and in the host cache (torch-free).

The scheduler decides, the executors obey: a model executor copies weights into slots as told
by AdapterLoad, and keeps exactly the host cache described here; the simulator prices the same
loads. Invariants (check_integrity):
- a slot holds at most one adapter, and an adapter at most one slot;
- an adapter with running requests (num_users > 0) is resident and never evicted;
- a resident adapter is in the idle LRU iff it has no users;
- every resident adapter is also in the host cache unless max_cpu_loras is smaller than
  max_loras; the host cache holds at most max_cpu_loras adapters.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from corral.lora.adapter import AdapterRef


class AdapterLoad(NamedTuple):
    """Copy `adapter` into compute slot `slot` before the step; read it from disk first when
    from_disk (else it is in the host cache)."""

    slot: int
    adapter: AdapterRef
    from_disk: bool


@dataclass(slots=True)
class AdapterStats:
    num_loads: int = 0  # into a compute slot
    num_disk_loads: int = 0  # of those, read from disk (not in the host cache)
    num_slot_evictions: int = 0
    num_host_evictions: int = 0
    num_bypasses: int = 0  # admissions that overtook a request waiting for a slot
    load_bytes: int = 0
    # Gauges, filled in by snapshots: adapters in slots, and those with running requests.
    num_resident: int = 0
    num_in_use: int = 0
    running_adapter_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdapterPlan:
    """One step's adapter work: the loads into slots, in order, then the host-cache entries to
    drop (an executor applies them in that order, before the forward pass)."""

    loads: list[AdapterLoad] = field(default_factory=list)
    host_evictions: list[str] = field(default_factory=list)


class AdapterResidency:
    """max_loras compute slots and a host LRU cache of max_cpu_loras adapters."""

    def __init__(self, max_loras: int, max_cpu_loras: int) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        if max_cpu_loras < 1:
            raise ValueError(f"max_cpu_loras must be >= 1, got {max_cpu_loras}")
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self.slot_keys: list[str | None] = [None] * max_loras
        self.slot_ranks: list[int] = [0] * max_loras
        self._slot_of: dict[str, int] = {}
        self._num_users: dict[str, int] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # resident, unused; oldest first
        self._host: OrderedDict[str, None] = OrderedDict()  # host cache; least recent first
        self._loads: list[AdapterLoad] = []
        self._host_evictions: list[str] = []
        self.stats = AdapterStats()

    def is_resident(self, key: str) -> bool:
        return key in self._slot_of

    def can_acquire(self, adapter: AdapterRef | None) -> bool:
        """Whether a request of this adapter (None: the base model) could start now: its
        adapter is resident, a slot is free, or an idle adapter's slot can be taken."""
        if adapter is None or adapter.key in self._slot_of:
            return True
        return len(self._slot_of) < self.max_loras or bool(self._idle)

    def acquire(self, adapter: AdapterRef) -> int:
        """A request of `adapter` starts running: pin the adapter in a slot (loading it if it
        is not resident) and return the slot. Call only when can_acquire(adapter)."""
        key = adapter.key
        slot = self._slot_of.get(key)
        if slot is None:
            slot = self._free_slot()
            self.slot_keys[slot] = key
            self.slot_ranks[slot] = adapter.rank
            self._slot_of[key] = slot
            # An eviction still pending in this plan has not reached the executor's cache.
            from_disk = key not in self._host and key not in self._host_evictions
            self._touch_host(key)
            self._loads.append(AdapterLoad(slot, adapter, from_disk))
            self.stats.num_loads += 1
            self.stats.num_disk_loads += from_disk
            self.stats.load_bytes += adapter.num_bytes
        else:
            self._idle.pop(key, None)
        self._num_users[key] = self._num_users.get(key, 0) + 1
        return slot

    def release(self, key: str) -> None:
        """A request of adapter `key` stopped running (finished or preempted)."""
        remaining = self._num_users[key] - 1
        if remaining:
            self._num_users[key] = remaining
            return
        del self._num_users[key]
        self._idle[key] = None

    def take_plan(self) -> AdapterPlan | None:
        """The loads and host evictions decided since the last call (None: nothing)."""
        if not self._loads and not self._host_evictions:
            return None
        plan = AdapterPlan(self._loads, self._host_evictions)
        self._loads, self._host_evictions = [], []
        return plan

    @property
    def num_resident(self) -> int:
        return len(self._slot_of)

    @property
    def num_in_use(self) -> int:
        return len(self._num_users)

    def running_keys(self) -> list[str]:
        return list(self._num_users)

    def check_integrity(self) -> None:
        """Raise AssertionError when an invariant of the module docstring does not hold."""
        for key, slot in self._slot_of.items():
            assert self.slot_keys[slot] == key, (key, slot)
        assert sum(key is not None for key in self.slot_keys) == len(self._slot_of)
        assert set(self._num_users) | set(self._idle) == set(self._slot_of)
        assert not set(self._num_users) & set(self._idle)
        assert all(count > 0 for count in self._num_users.values())
        assert len(self._host) <= self.max_cpu_loras

    def _free_slot(self) -> int:
        if len(self._slot_of) < self.max_loras:
            return self.slot_keys.index(None)
        victim, _ = self._idle.popitem(last=False)
        slot = self._slot_of.pop(victim)
        self.slot_keys[slot] = None
        self.stats.num_slot_evictions += 1
        return slot

    def _touch_host(self, key: str) -> None:
        if key in self._host:
            self._host.move_to_end(key)
            return
        if key in self._host_evictions:
            self._host_evictions.remove(key)
        self._host[key] = None
        while len(self._host) > self.max_cpu_loras:
            evicted, _ = self._host.popitem(last=False)
            self._host_evictions.append(evicted)
            self.stats.num_host_evictions += 1
