"""Lower-tier bookkeeping without torch: spill chains, plan order, disk reads, swaps."""

from __future__ import annotations

from corral.core.kv_cache import KVCacheManager
from corral.core.kv_tiers import DiskTier, HostTier
from corral.core.kv_transfer import DiskReadResult
from tests.core.helpers import make_request


def compute(manager, request):
    match = manager.match_prefix(request)
    assert manager.allocate_slots(request, request.num_tokens - match.num_tokens, match)
    request.num_computed_tokens = request.num_tokens
    manager.cache_blocks(request)
    manager.free(request)


def push_down(manager, hashes_of, disk, limit=20):
    """Compute distinct prompts until the first block of hashes_of sits only on disk."""
    plans = []
    for index in range(limit):
        start = 1000 + 100 * index
        compute(manager, make_request(list(range(start, start + 9))))
        plans.append(manager.take_transfer_plan())
        first = hashes_of.block_hashes[0]
        if (
            first in disk
            and manager.offloader.host.lookup(first) is None
            and (manager.pool.lookup(first) is None)
        ):
            return plans
    raise AssertionError("the block never reached the disk tier")


def test_device_evictions_spill_to_host_then_disk_in_plan_order():
    disk = DiskTier(max_bytes=10 * 100, block_bytes=100)
    manager = KVCacheManager(3, 4, num_host_slots=2, disk_tier=disk)
    first = make_request(list(range(1, 10)))
    compute(manager, first)
    plans = push_down(manager, first, disk)
    writes = [(plan, write) for plan in plans for write in plan.disk_writes]
    assert writes, "host evictions were written to disk"
    for plan, (slot, _) in writes:
        # The slot is reused by a save in the same step: the write copies it out first.
        assert slot in [s for _, s in plan.saves]
    assert disk.num_blocks >= 1
    manager.check_integrity()


def test_disk_hits_wait_for_disk_reads_then_load():
    disk = DiskTier(max_bytes=10 * 100, block_bytes=100)
    manager = KVCacheManager(4, 4, num_host_slots=2, disk_tier=disk)
    first = make_request(list(range(1, 10)))
    compute(manager, first)
    push_down(manager, first, disk)
    again = make_request(list(range(1, 10)))
    match = manager.match_prefix(again)
    assert match.waiting and match.num_tokens == 0
    plan = manager.take_transfer_plan()
    assert 1 <= len(plan.disk_reads) <= 2
    # Still in flight: keep waiting.
    assert manager.match_prefix(again).waiting
    manager.take_transfer_plan()
    manager.finish_disk_reads([DiskReadResult(h, slot, True) for h, slot in plan.disk_reads])
    match = manager.match_prefix(again)
    if match.waiting:  # the second block was only read from disk now
        manager.finish_disk_reads(
            [DiskReadResult(h, s, True) for h, s in manager.take_transfer_plan().disk_reads]
        )
        match = manager.match_prefix(again)
    assert not match.waiting and match.num_tokens == 8 and len(match.host_hashes) == 2
    assert manager.allocate_slots(again, 1, match) is not None
    assert len(manager.take_transfer_plan().loads) == 2
    manager.check_integrity()


def test_failed_disk_read_is_dropped_from_disk_and_recomputed():
    disk = DiskTier(max_bytes=10 * 100, block_bytes=100)
    manager = KVCacheManager(3, 4, num_host_slots=2, disk_tier=disk)
    first = make_request(list(range(1, 6)))
    compute(manager, first)
    push_down(manager, first, disk)
    request = make_request(list(range(1, 6)))
    assert manager.match_prefix(request).waiting
    plan = manager.take_transfer_plan()
    manager.finish_disk_reads([DiskReadResult(h, s, False) for h, s in plan.disk_reads])
    match = manager.match_prefix(request)
    assert not match.waiting and match.num_tokens == 0
    manager.check_integrity()


def test_swap_out_and_in_keep_slots_until_the_loads_ran():
    manager = KVCacheManager(4, 4, num_host_slots=4)
    request = make_request(list(range(1, 11)))
    manager.allocate_slots(request, 10)
    request.num_computed_tokens = 10
    assert manager.swap_out(request)
    plan = manager.take_transfer_plan()
    assert len(plan.saves) == 3 and manager.num_blocks_held(request.request_id) == 0
    assert manager.is_swapped(request)
    block_ids = manager.swap_in(request, 1)
    assert len(block_ids) == 3
    host: HostTier = manager.offloader.host
    assert host.num_free_slots == 1  # the 3 swapped slots are read by this step's loads
    assert len(manager.take_transfer_plan().loads) == 3
    assert host.num_free_slots == 4
    manager.check_integrity()


def test_swap_out_without_room_changes_nothing():
    manager = KVCacheManager(8, 4, num_host_slots=1)
    request = make_request(list(range(1, 11)))
    manager.allocate_slots(request, 10)
    assert not manager.swap_out(request)
    assert manager.num_blocks_held(request.request_id) == 3
    manager.check_integrity()


def test_disk_tier_trims_to_its_budget_on_start():
    disk = DiskTier(max_bytes=250, block_bytes=100, existing=[b"a", b"b", b"c"])
    assert disk.max_blocks == 2 and disk.evicted_on_start == [b"a"]
    assert disk.add(b"d") == [b"b"]
    disk.check_integrity()
