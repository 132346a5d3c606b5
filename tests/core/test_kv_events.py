"""KV events from the KV manager (no torch): what enters and leaves the prefix cache, with the
exact hashes of Request.block_hashes; nothing at all when events are off."""

from __future__ import annotations

from corral.core.kv_cache import KVCacheManager
from corral.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBuffer,
    batch_from_wire,
    batch_to_wire,
    event_from_wire,
    event_to_wire,
    external_block_hash,
)
from corral.request import Request
from corral.sampling_params import SamplingParams
from tests.core.helpers import make_request


def compute(manager: KVCacheManager, request: Request, num_tokens: int, prefix=None) -> None:
    assert manager.allocate_slots(request, num_tokens, prefix) is not None
    request.num_computed_tokens += num_tokens + (prefix.num_tokens if prefix else 0)
    manager.cache_blocks(request)


def test_stored_events_carry_the_request_hashes_parents_and_tokens():
    manager = KVCacheManager(16, 4, enable_kv_events=True)
    prompt = list(range(1, 11))  # 10 tokens: blocks 0 and 1 full
    request = make_request(prompt)
    compute(manager, request, 10)
    hashes = request.block_hashes
    assert manager.take_kv_events() == [BlockStored(tuple(hashes[:2]), None, tuple(prompt[:8]), 4)]
    for token in (50, 51):
        request.append_output_token(token)
    compute(manager, request, 2)  # block 2 full now: its parent is block 1
    assert manager.take_kv_events() == [BlockStored((hashes[2],), hashes[1], (9, 10, 50, 51), 4)]
    assert manager.take_kv_events() == []  # taken once
    assert len(hashes) == 3 and all(isinstance(h, bytes) and len(h) == 32 for h in hashes)


def test_prefix_hits_and_duplicates_are_not_stored_again():
    manager = KVCacheManager(16, 4, enable_kv_events=True)
    first = make_request(list(range(1, 13)))
    compute(manager, first, 12)
    manager.take_kv_events()
    second = make_request(list(range(1, 9)) + [70, 71, 72, 73, 74])  # shares blocks 0 and 1
    prefix = manager.match_prefix(second)
    assert prefix.num_tokens == 8
    compute(manager, second, second.num_tokens - 8, prefix)
    assert second.block_hashes[:2] == first.block_hashes[:2]
    assert manager.take_kv_events() == [
        BlockStored((second.block_hashes[2],), first.block_hashes[1], (70, 71, 72, 73), 4)
    ]
    # Two requests with one prompt, both computed before either registers: one stores.
    third, fourth = make_request([5] * 8), make_request([5] * 8)
    for request in (third, fourth):
        assert manager.allocate_slots(request, 8) is not None
        request.num_computed_tokens = 8
    manager.cache_blocks(third)
    manager.cache_blocks(fourth)
    assert manager.take_kv_events() == [BlockStored(tuple(third.block_hashes), None, (5,) * 8, 4)]
    manager.check_integrity()


def test_evictions_are_removed_events_in_eviction_order_before_later_stores():
    manager = KVCacheManager(4, 4, enable_kv_events=True)
    first = make_request(list(range(1, 13)))  # 3 full blocks (the 4th slot stays free)
    compute(manager, first, 12)
    manager.free(first)
    manager.take_kv_events()
    second = make_request(list(range(100, 116)))  # needs all 4 blocks: evicts 3 cached ones
    compute(manager, second, 16)
    # Freed last-first, so the LRU order evicts block 2, then 1, then 0.
    removed = tuple(reversed(first.block_hashes))
    assert manager.take_kv_events() == [
        BlockRemoved(removed),
        BlockStored(tuple(second.block_hashes), None, tuple(range(100, 116)), 4),
    ]
    manager.check_integrity()


def test_reset_clears_or_removes_what_it_dropped():
    manager = KVCacheManager(16, 4, enable_kv_events=True)
    held, freed = make_request(list(range(1, 9))), make_request(list(range(20, 29)))
    compute(manager, held, 8)
    compute(manager, freed, 9)
    manager.free(freed)
    manager.take_kv_events()
    assert manager.reset_prefix_cache() == 2  # held's blocks are in use: they stay cached
    assert manager.take_kv_events() == [BlockRemoved(tuple(freed.block_hashes[:2]))]
    manager.free(held)
    last = make_request([9] * 5)
    compute(manager, last, 5)  # a store, superseded by the clear below
    manager.free(last)
    assert manager.reset_prefix_cache() == 3
    assert manager.take_kv_events() == [AllBlocksCleared()]
    manager.check_integrity()


def test_blocks_loaded_from_the_host_tier_are_stored():
    manager = KVCacheManager(4, 4, num_host_slots=8, enable_kv_events=True)
    prompt = list(range(1, 10))
    first = make_request(prompt)
    compute(manager, first, 9)
    manager.free(first)
    other = make_request(list(range(100, 116)))
    compute(manager, other, 16)  # evicts first's cached blocks (saved to the host tier)
    manager.free(other)
    manager.take_kv_events()
    again = make_request(prompt)
    prefix = manager.match_prefix(again)
    assert prefix.host_hashes == first.block_hashes[:2] and not prefix.blocks
    assert manager.allocate_slots(again, 1, prefix) is not None
    events = manager.take_kv_events()
    assert events[-1] == BlockStored(tuple(first.block_hashes[:2]), None, tuple(prompt[:8]), 4)
    assert isinstance(events[0], BlockRemoved)  # the new blocks evicted other's cached ones


def test_adapter_requests_name_their_adapter():
    manager = KVCacheManager(8, 4, enable_kv_events=True)
    params = SamplingParams(max_tokens=2)
    request = Request("a", [1, 2, 3, 4, 5], params, max_model_len=64, adapter_id="sql@abc")
    compute(manager, request, 5)
    (event,) = manager.take_kv_events()
    assert isinstance(event, BlockStored)
    assert event.lora_name == "sql@abc" and event.block_hashes == tuple(request.block_hashes)


def test_nothing_is_recorded_when_events_are_off():
    manager = KVCacheManager(4, 4)
    assert manager.events is None and manager.pool.events is None
    first = make_request(list(range(1, 13)))
    compute(manager, first, 12)
    manager.free(first)
    compute(manager, make_request(list(range(100, 116))), 16)
    manager.reset_prefix_cache()
    assert manager.take_kv_events() == []


def test_buffer_merges_consecutive_removals():
    buffer = KVEventBuffer(2)
    for block_hash in (b"a", b"b"):
        buffer.record_removed(block_hash)
    buffer.record_stored([b"x", b"y", b"z"], 1, 3, [1, 2, 3, 4, 5, 6], None)
    buffer.record_removed(b"c")
    assert buffer.take() == [
        BlockRemoved((b"a", b"b")),
        BlockStored((b"y", b"z"), b"x", (3, 4, 5, 6), 2),
        BlockRemoved((b"c",)),
    ]


def test_wire_layout_is_vllms():
    digest = bytes(range(32))
    low_64 = int.from_bytes(digest[24:], "big")
    assert external_block_hash(digest) == low_64
    assert external_block_hash(digest, "bytes") == digest
    assert external_block_hash(-1) == 2**64 - 1  # a builtin hash, as uint64
    stored = BlockStored((digest,), None, (1, 2), 2, "sql")
    assert event_to_wire(stored) == ["BlockStored", [low_64], None, [1, 2], 2, None, "GPU", "sql"]
    assert event_to_wire(BlockRemoved((digest,)), "bytes") == ["BlockRemoved", [digest], "GPU"]
    assert event_to_wire(AllBlocksCleared()) == ["AllBlocksCleared"]
    assert event_to_wire(stored, encoding="map") == {
        "type": "BlockStored",
        "block_hashes": [low_64],
        "parent_block_hash": None,
        "token_ids": [1, 2],
        "block_size": 2,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": "sql",
    }
    batch = batch_to_wire(1.5, [stored, AllBlocksCleared()])
    assert batch[0] == 1.5 and batch[2] == 0 and len(batch) == 3
    ts, events, rank = batch_from_wire(batch)
    assert (ts, rank) == (1.5, 0)
    assert events == [BlockStored((low_64,), None, (1, 2), 2, "sql"), AllBlocksCleared()]
    # Older layouts (no medium, no lora_name) and newer ones (more fields) decode too.
    old = event_from_wire(["BlockStored", [7], 3, [1, 2], 2, None])
    assert old == BlockStored((7,), 3, (1, 2), 2, None, None, None)
    new = event_from_wire({"type": "BlockRemoved", "block_hashes": [7], "group_idx": 0})
    assert new == BlockRemoved((7,), None)
