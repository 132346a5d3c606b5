"""Adapter slots and host cache (torch-free): eviction order, pinning, plans, integrity."""

from __future__ import annotations

import random

import pytest

from corral.core.adapter_residency import AdapterResidency
from corral.lora.adapter import AdapterRef


def ref(name: str, rank: int = 8) -> AdapterRef:
    return AdapterRef(name, f"/adapters/{name}", name * 8, rank, 1000, 4000)


def test_loads_fill_free_slots_then_evict_the_least_recently_idle():
    residency = AdapterResidency(max_loras=2, max_cpu_loras=8)
    a, b, c = ref("a"), ref("b"), ref("c", rank=4)
    assert residency.acquire(a) == 0
    assert residency.acquire(b) == 1
    assert not residency.can_acquire(c)  # both slots pinned by running requests
    assert residency.can_acquire(a) and residency.can_acquire(None)
    residency.release(b.key)
    residency.release(a.key)  # idle order: b (older), then a
    assert residency.can_acquire(c)
    assert residency.acquire(c) == 1  # b's slot: b went idle first
    assert residency.slot_keys == [a.key, c.key] and residency.slot_ranks[1] == 4
    plan = residency.take_plan()
    assert [(load.slot, load.adapter.name, load.from_disk) for load in plan.loads] == [
        (0, "a", True),
        (1, "b", True),
        (1, "c", True),
    ]
    assert residency.take_plan() is None
    assert residency.stats.num_slot_evictions == 1
    # b comes back from the host cache, into a's slot (a is idle, c is pinned).
    assert residency.acquire(b) == 0
    (load,) = residency.take_plan().loads
    assert (load.slot, load.adapter.name, load.from_disk) == (0, "b", False)
    residency.check_integrity()


def test_an_adapter_in_use_is_never_evicted_and_shared_by_its_requests():
    residency = AdapterResidency(max_loras=1, max_cpu_loras=1)
    a, b = ref("a"), ref("b")
    assert residency.acquire(a) == 0
    assert residency.acquire(a) == 0  # a second request of a: no load
    residency.release(a.key)
    assert not residency.can_acquire(b)  # one request of a still runs
    residency.release(a.key)
    assert residency.can_acquire(b)
    residency.acquire(b)
    plan = residency.take_plan()
    assert [load.adapter.name for load in plan.loads] == ["a", "b"]
    assert plan.host_evictions == [a.key]  # the host cache holds one adapter
    residency.check_integrity()


def test_a_host_eviction_undone_in_the_same_plan_is_not_sent():
    residency = AdapterResidency(max_loras=2, max_cpu_loras=2)
    a, b, c = ref("a"), ref("b"), ref("c")
    residency.acquire(a)
    residency.release(a.key)
    residency.acquire(b)
    residency.take_plan()
    residency.acquire(c)  # host cache {a, b} + c: a (least recent) is dropped...
    residency.release(b.key)
    residency.release(c.key)
    residency.acquire(a)  # ...and wanted again before the executor saw the plan
    plan = residency.take_plan()
    # The executor still has a in its host cache: no disk read, and no eviction of a.
    assert [(load.adapter.name, load.from_disk) for load in plan.loads] == [
        ("c", True),
        ("a", False),
    ]
    assert a.key not in plan.host_evictions and b.key in plan.host_evictions


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_keep_the_invariants_and_mirror_an_executor(seed):
    rng = random.Random(seed)
    residency = AdapterResidency(max_loras=3, max_cpu_loras=4)
    adapters = [ref(f"x{i}", rank=rng.choice([4, 8, 16])) for i in range(7)]
    users: list[str] = []
    # The executor's view, updated only from plans: slot -> key, and its host cache.
    executor_slots: dict[int, str] = {}
    executor_host: set[str] = set()
    for _ in range(500):
        if users and rng.random() < 0.45:
            residency.release(users.pop(rng.randrange(len(users))))
        else:
            adapter = rng.choice(adapters)
            if residency.can_acquire(adapter):
                slot = residency.acquire(adapter)
                users.append(adapter.key)
                assert residency.slot_keys[slot] == adapter.key
        residency.check_integrity()
        plan = residency.take_plan()
        if plan is not None:
            for load in plan.loads:
                assert load.from_disk == (load.adapter.key not in executor_host)
                executor_host.add(load.adapter.key)
                executor_slots[load.slot] = load.adapter.key
            executor_host -= set(plan.host_evictions)
        assert len(executor_host) <= 4
        for key in users:  # every running request's adapter is where the executor has it
            assert executor_slots[residency.slot_keys.index(key)] == key
