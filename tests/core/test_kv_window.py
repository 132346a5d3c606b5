"""Bounded attention windows in the control plane: which blocks go, which stay, and what a pool
smaller than a whole request can still serve (corral/core/kv_window.py)."""

from __future__ import annotations

import itertools

import pytest

from corral.config import SchedulerConfig
from corral.core.batch_shape import BatchShapeCounter, attended_pairs
from corral.core.kv_cache import KVCacheManager
from corral.core.kv_capacity import kv_pool_refusal
from corral.core.kv_window import KVWindow, parse_kv_window_policy, resolve_kv_window
from corral.core.scheduler import KV_POOL_FULL, Scheduler
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request


def test_policy_parsing_and_refusals():
    assert parse_kv_window_policy("sink:4,window:1020") == KVWindow(1020, 4)
    assert parse_kv_window_policy("window:64") == KVWindow(64, 0)
    assert parse_kv_window_policy(None) is None
    assert parse_kv_window_policy("none") is None
    for bad, named in [
        ("sink:4", "window:W is required"),
        ("sink:x,window:8", "sink must be an integer"),
        ("sinks:4,window:8", "'sinks:4'"),
        ("window:0", "window_tokens >= 1"),
        ("sink:-1,window:8", "num_sink_tokens must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=named):
            parse_kv_window_policy(bad)
    assert resolve_kv_window(64, None) == KVWindow(64)
    assert resolve_kv_window(None, "sink:2,window:6") == KVWindow(6, 2)
    with pytest.raises(ValueError, match="full-attention models"):
        resolve_kv_window(64, "sink:2,window:6")


def test_drop_blocks_keeps_sinks_and_the_window_and_counts_live_blocks():
    manager = KVCacheManager(16, 4)
    manager.reserve_null_block()
    assert manager.num_blocks == 15  # the null block holds no KV
    request = make_request(30)
    assert manager.allocate_slots(request, 30) is not None
    request.num_computed_tokens = 30
    manager.cache_blocks(request)
    table = manager.block_ids(request.request_id)
    window = KVWindow(window_tokens=9, num_sink_tokens=3)
    # The next query sits at 30 and sees (21, 30]: blocks 1..4 (positions 4..19) are dead,
    # block 0 holds the sinks, block 5 (20..23) still holds 22 and 23.
    first_live = window.first_live_position(30)
    assert first_live == 22
    dropped = manager.drop_blocks(request, first_live, window.num_sink_blocks(4))
    assert dropped == 4
    null_id = manager.pool.null_block.block_id
    after = manager.block_ids(request.request_id)
    assert after == [table[0], null_id, null_id, null_id, null_id, *table[5:]]
    assert manager.num_live_blocks(request.request_id) == 4
    assert manager.num_free_blocks == 15 - 4
    # Registered blocks stay in the prefix cache after they are dropped.
    assert all(manager.pool.blocks[i].block_hash is not None for i in table[1:5])
    # Idempotent, and the swap path refuses a table with holes (it would copy the null block).
    assert manager.drop_blocks(request, first_live, 1) == 0
    assert manager.swap_out(request) is False
    manager.check_integrity()
    manager.free(request)
    manager.check_integrity()
    assert manager.num_free_blocks == manager.num_blocks


def test_unregistered_blocks_are_not_dropped_before_the_prefix_cache_has_them():
    manager = KVCacheManager(16, 4)
    manager.reserve_null_block()
    request = make_request(30)
    manager.allocate_slots(request, 30)
    request.num_computed_tokens = 30  # cache_blocks not called yet
    assert manager.drop_blocks(request, 22, 0) == 0
    manager.cache_blocks(request)
    assert manager.drop_blocks(request, 22, 0) == 5


def test_a_pool_smaller_than_the_request_serves_it_with_a_window():
    """24 blocks of 4 = 96 slots; the request needs 300. Without a window it is finished at the
    pool's end; with a 16-token window it runs to max_tokens and never holds more than its
    window's blocks."""
    config = SchedulerConfig(max_num_batched_tokens=16, max_num_seqs=4)

    def run(window: KVWindow | None):
        manager = KVCacheManager(24, 4)
        scheduler = Scheduler(config, manager, 4096, kv_window=window)
        request = make_request(60, max_tokens=240)
        scheduler.add_request(request)
        executor = FakeExecutor(scheduler)
        peak = 0
        while scheduler.has_unfinished_requests():
            executor.step()
            peak = max(peak, manager.num_blocks - manager.num_free_blocks)
            manager.check_integrity()
        return request, peak

    full, _ = run(None)
    assert full.stop_reason == KV_POOL_FULL and full.num_output_tokens < 240
    windowed, peak = run(KVWindow(window_tokens=16, num_sink_tokens=4))
    assert windowed.num_output_tokens == 240
    # sinks (1 block) + window (4 blocks) + the chunk (16 tokens: 4 blocks) + 1 partial
    assert peak <= 1 + 4 + 4 + 1


def test_admission_uses_the_live_bound_with_a_window():
    # A 1000-token prompt in a 64-slot pool: refused without a window, accepted with one
    # whose live bound fits (window 24 + chunk 16 + one block), refused when it does not.
    assert "exceed the KV pool" in kv_pool_refusal(1000, 10, 16, 4)
    fits = KVWindow(24).max_live_tokens(16, 4)
    assert kv_pool_refusal(1000, 10, 16, 4, "none", fits) is None
    too_big = KVWindow(200).max_live_tokens(16, 4)
    assert "within the attention window" in kv_pool_refusal(1000, 10, 16, 4, "none", too_big)


def test_attended_pairs_caps_each_query_at_the_span():
    for num_tokens, context, span in itertools.product(range(1, 9), range(0, 9), [None, 1, 4, 7]):
        expected = sum(
            min(context + i, span) if span else context + i for i in range(1, num_tokens + 1)
        )
        assert attended_pairs(num_tokens, context, span) == expected


def test_the_simulator_prices_decodes_at_the_window():
    config = SchedulerConfig(max_num_batched_tokens=64)
    manager = KVCacheManager(64, 4)
    scheduler = Scheduler(config, manager, 4096, kv_window=KVWindow(8))
    scheduler.add_request(make_request(40, max_tokens=4))
    counter = BatchShapeCounter(max_attended_tokens=8)
    executor = FakeExecutor(scheduler)
    shapes = []
    while scheduler.has_unfinished_requests():
        output = scheduler.schedule()
        shape, _ = counter.count(output)
        shapes.append(shape)
        scheduler.update(output, executor.execute(output))
    decodes = [s for s in shapes if s is not None and s.num_decode_requests]
    assert decodes and all(s.decode_context_tokens == 8 for s in decodes)
    assert shapes[0].prefill_attention_pairs == attended_pairs(40, 0, 8)
