from __future__ import annotations

import pytest

from corral.core.block_pool import BlockPool


def test_allocates_from_the_front_in_id_order():
    pool = BlockPool(6)
    assert [b.block_id for b in pool.allocate(3)] == [0, 1, 2]
    assert pool.num_free_blocks == 3
    assert all(b.ref_count == 1 for b in pool.blocks[:3])
    assert pool.check_integrity() == (3, 0, 3)


def test_released_blocks_join_the_tail_and_cached_ones_evict_in_lru_order():
    pool = BlockPool(4)
    a, b, c, d = pool.allocate(4)
    pool.register(a, b"ha")
    pool.register(b, b"hb")
    pool.release([b])  # freed first -> evicted first
    pool.release([a])
    assert pool.check_integrity() == (0, 2, 2)
    (taken,) = pool.allocate(1)
    assert taken is b and b.block_hash is None
    assert pool.lookup(b"hb") is None and pool.lookup(b"ha") is a
    assert pool.stats.prefix_cache_evictions == 1


def test_touch_revives_an_evictable_block_and_counts_references():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    pool.register(a, b"h")
    pool.release([a])
    assert pool.num_free_blocks == 3
    pool.touch([a])
    pool.touch([a])
    assert a.ref_count == 2 and pool.num_free_blocks == 2
    pool.release([a])
    assert pool.num_free_blocks == 2
    pool.release([a])
    assert pool.num_free_blocks == 3 and pool.lookup(b"h") is a
    pool.check_integrity()


def test_register_keeps_the_first_block_for_a_hash():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.register(a, b"h")
    assert not pool.register(b, b"h")
    assert b.block_hash is None and pool.lookup(b"h") is a


def test_over_allocation_and_double_release_are_errors():
    pool = BlockPool(2)
    with pytest.raises(RuntimeError):
        pool.allocate(3)
    (a,) = pool.allocate(1)
    pool.release([a])
    with pytest.raises(RuntimeError):
        pool.release([a])


def test_integrity_check_detects_corruption():
    pool = BlockPool(3)
    (a,) = pool.allocate(1)
    a.ref_count = 0  # referenced state lost without returning to the queue
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_reset_prefix_cache_drops_only_unreferenced_hashes():
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    pool.register(a, b"a")
    pool.register(b, b"b")
    pool.release([a])
    assert pool.reset_prefix_cache() == 1
    assert pool.lookup(b"a") is None and pool.lookup(b"b") is b
    pool.check_integrity()
