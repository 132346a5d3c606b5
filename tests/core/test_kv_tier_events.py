"""KV events of the host and disk tiers (no torch): a block entering a tier is a BlockStored of
its medium, one leaving it a BlockRemoved of that medium, and a router fed the events (through
the wire form, msgpack) still sees a prefix that only the host tier holds."""

from __future__ import annotations

import msgpack

from corral.cluster.prefix_index import ReportedPrefixIndex
from corral.core.kv_cache import KVCacheManager
from corral.core.kv_events import (
    MEDIUM_DEVICE,
    MEDIUM_DISK,
    MEDIUM_HOST,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    KVEventBuffer,
    batch_from_wire,
    batch_to_wire,
    external_block_hash,
)
from corral.core.kv_tiers import DiskTier
from corral.core.kv_transfer import DiskReadResult
from corral.request import Request
from tests.core.helpers import make_request


def run(manager: KVCacheManager, prompt: list[int]) -> Request:
    """Compute a prompt, register its full blocks, free it, end the step."""
    request = make_request(prompt)
    match = manager.match_prefix(request)
    assert manager.allocate_slots(request, request.num_tokens - match.num_tokens, match)
    request.num_computed_tokens = request.num_tokens
    manager.cache_blocks(request)
    manager.free(request)
    manager.take_transfer_plan()  # the step's copies ran: host slots are no longer busy
    return request


def cpu_stored(*hashes) -> BlockStored:
    return BlockStored(tuple(hashes), None, (), 4, None, None, MEDIUM_HOST)


def disk_stored(*hashes) -> BlockStored:
    return BlockStored(tuple(hashes), None, (), 4, None, None, MEDIUM_DISK)


def test_a_device_eviction_is_removed_from_gpu_then_stored_in_cpu():
    manager = KVCacheManager(4, 4, num_host_slots=8, enable_kv_events=True)
    first = run(manager, list(range(1, 10)))  # blocks 0 and 1 full
    h0, h1 = first.block_hashes
    manager.take_kv_events()
    other = run(manager, list(range(100, 116)))  # takes all 4 blocks: evicts block 1, then 0
    assert manager.take_kv_events() == [
        BlockRemoved((h1,), MEDIUM_DEVICE),
        cpu_stored(h1),
        BlockRemoved((h0,), MEDIUM_DEVICE),
        cpu_stored(h0),
        BlockStored(tuple(other.block_hashes), None, tuple(range(100, 116)), 4),
    ]
    manager.check_integrity()


def test_host_evictions_spill_to_disk_and_disk_trims_are_removed_with_their_medium():
    disk = DiskTier(max_bytes=100, block_bytes=100)  # one block on disk
    manager = KVCacheManager(2, 4, num_host_slots=1, disk_tier=disk, enable_kv_events=True)
    a, b, c = (run(manager, [base + i for i in range(5)]).block_hashes[0] for base in (10, 20, 30))
    # a: device -> host; b: device -> host (a spilled to disk); c: device -> host (b to disk).
    manager.take_kv_events()
    d = run(manager, list(range(40, 45))).block_hashes[0]  # evicts c from the device
    assert manager.take_kv_events() == [
        BlockRemoved((c,), MEDIUM_DEVICE),
        BlockRemoved((b,), MEDIUM_HOST),  # the host's LRU entry makes room for c
        disk_stored(b),
        BlockRemoved((a,), MEDIUM_DISK),  # the disk budget holds one block
        cpu_stored(c),
        BlockStored((d,), None, (40, 41, 42, 43), 4),
    ]
    assert disk.num_blocks == 1 and b in disk
    manager.check_integrity()


def test_disk_reads_store_in_cpu_and_failed_reads_leave_disk():
    disk = DiskTier(max_bytes=400, block_bytes=100)
    manager = KVCacheManager(2, 4, num_host_slots=1, disk_tier=disk, enable_kv_events=True)
    prompts = [[base + i for i in range(5)] for base in (10, 20, 30, 40)]
    a, b, c, _ = (run(manager, prompt).block_hashes[0] for prompt in prompts)
    # Each run evicts the one before from the device: a and b went on to disk, c is in host.
    assert a in disk and b in disk and manager.offloader.host.lookup(c) is not None
    manager.take_kv_events()
    match = manager.match_prefix(make_request(prompts[0]))
    assert match.waiting  # a is being read from disk into the host slot (evicting c there)
    (read,) = manager.take_transfer_plan().disk_reads
    assert manager.take_kv_events() == [BlockRemoved((c,), MEDIUM_HOST), disk_stored(c)]
    manager.finish_disk_reads([DiskReadResult(a, read[1], ok=True)])
    assert manager.take_kv_events() == [cpu_stored(a)]  # once read, not when the read started
    manager.finish_disk_reads([])
    match = manager.match_prefix(make_request(prompts[1]))  # b: another read, which fails
    (read,) = manager.take_transfer_plan().disk_reads
    manager.finish_disk_reads([DiskReadResult(b, read[1], ok=False)])
    assert manager.take_kv_events()[-1] == BlockRemoved((b,), MEDIUM_DISK)
    manager.check_integrity()


def test_files_on_disk_at_start_are_stored_and_a_reset_stores_the_tiers_again():
    disk = DiskTier(max_bytes=300, block_bytes=100, existing=[b"old-1", b"old-2"])
    manager = KVCacheManager(4, 4, num_host_slots=4, disk_tier=disk, enable_kv_events=True)
    first = run(manager, list(range(1, 6)))
    run(manager, list(range(50, 66)))  # evicts first's block into the host tier
    manager.take_kv_events()
    assert manager.reset_prefix_cache() == 4
    assert manager.take_kv_events() == [
        AllBlocksCleared(),  # a consumer drops every medium here: the tiers are stored again
        cpu_stored(first.block_hashes[0]),
        disk_stored(b"old-1", b"old-2"),
    ]
    fresh = KVCacheManager(4, 4, num_host_slots=4, disk_tier=disk, enable_kv_events=True)
    assert fresh.take_kv_events() == [disk_stored(b"old-1", b"old-2")]


def test_buffer_merges_runs_per_medium_and_kind():
    buffer = KVEventBuffer(4)
    buffer.record_removed(b"a")
    buffer.record_removed(b"b", MEDIUM_HOST)
    buffer.record_removed(b"c", MEDIUM_HOST)
    buffer.record_tier_stored(b"d", MEDIUM_HOST)
    buffer.record_tier_stored(b"e", MEDIUM_HOST)
    buffer.record_tier_stored(b"f", MEDIUM_DISK)
    assert buffer.take() == [
        BlockRemoved((b"a",), MEDIUM_DEVICE),
        BlockRemoved((b"b", b"c"), MEDIUM_HOST),
        cpu_stored(b"d", b"e"),
        disk_stored(b"f"),
    ]


def over_the_wire(events: list[KVEvent], encoding: str) -> list[KVEvent]:
    payload = msgpack.packb(batch_to_wire(1.0, events, "int", encoding), use_bin_type=True)
    _, decoded, _ = batch_from_wire(msgpack.unpackb(payload, raw=False))
    return decoded


def feed(index: ReportedPrefixIndex, replica: int, events: list[KVEvent]) -> None:
    for event in events:
        if isinstance(event, BlockStored):
            index.on_stored(replica, event.block_hashes, event.medium)
        elif isinstance(event, BlockRemoved):
            index.on_removed(replica, event.block_hashes, event.medium)
        else:
            index.on_cleared(replica)


def test_the_router_still_sees_a_prefix_the_device_freed_while_the_host_keeps_it():
    for encoding in ("array", "map"):
        manager = KVCacheManager(4, 4, num_host_slots=8, enable_kv_events=True)
        index = ReportedPrefixIndex()
        first = run(manager, list(range(1, 10)))
        wire_hashes = [external_block_hash(h) for h in first.block_hashes]
        feed(index, 0, over_the_wire(manager.take_kv_events(), encoding))
        assert index.match(wire_hashes) == {0: 2}
        assert index.held_media(0, wire_hashes[0]) == {MEDIUM_DEVICE}
        run(manager, list(range(100, 116)))  # the device pool drops both blocks
        events = over_the_wire(manager.take_kv_events(), encoding)
        assert {e.medium for e in events if isinstance(e, BlockStored)} == {"CPU", "GPU"}
        feed(index, 0, events)
        assert index.match(wire_hashes) == {0: 2}, encoding  # held in the host tier
        assert index.held_media(0, wire_hashes[1]) == {MEDIUM_HOST}
        assert index.match_scores(wire_hashes) == {0: 2 * 0.8}
