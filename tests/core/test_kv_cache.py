from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.kv_cache import KVCacheManager
from tests.core.helpers import make_request


def compute(manager: KVCacheManager, request, num_tokens: int) -> list[int]:
    """Allocate and mark num_tokens as computed, registering full blocks."""
    block_ids = manager.allocate_slots(request, num_tokens)
    assert block_ids is not None
    request.num_computed_tokens += num_tokens
    manager.cache_blocks(request)
    return block_ids


def test_block_table_grows_with_exact_ids():
    manager = KVCacheManager(8, 4)
    request = make_request(10)
    assert manager.allocate_slots(request, 10) == [0, 1, 2]
    request.num_computed_tokens = 10
    request.append_output_token(99)
    assert manager.allocate_slots(request, 1) == []  # slot 10 fits in block 2
    request.num_computed_tokens = 11
    for token in (98, 97):
        request.append_output_token(token)
    assert manager.allocate_slots(request, 2) == [3]  # positions 11..12 cross into block 3
    assert manager.block_ids(request.request_id) == [0, 1, 2, 3]
    manager.check_integrity()


def test_allocation_fails_cleanly_when_full():
    manager = KVCacheManager(3, 4)
    first = make_request(8)
    assert manager.allocate_slots(first, 8) == [0, 1]
    second = make_request(8)
    assert manager.allocate_slots(second, 8) is None
    assert manager.block_ids(second.request_id) == []
    assert manager.num_free_blocks == 1
    manager.check_integrity()


def test_prefix_hit_reuses_full_blocks_and_stops_before_the_last_token():
    manager = KVCacheManager(16, 4)
    first = make_request(list(range(1, 13)))  # 12 tokens = 3 full blocks
    compute(manager, first, 12)
    manager.free(first)
    # Same 12 tokens: a hit may cover at most 11 tokens -> 2 blocks.
    same = make_request(list(range(1, 13)))
    match = manager.match_prefix(same)
    assert [b.block_id for b in match.blocks] == [0, 1] and match.num_tokens == 8
    # Longer prompt sharing the first 10 tokens: 2 full blocks match.
    longer = make_request(list(range(1, 11)) + [50, 51, 52, 53, 54])
    assert manager.match_prefix(longer).num_tokens == 8
    # A different first block: nothing matches even though later blocks are equal.
    other = make_request([77] + list(range(2, 13)))
    assert manager.match_prefix(other).num_tokens == 0


def test_prefix_hit_takes_references_and_allocates_the_rest():
    manager = KVCacheManager(16, 4)
    first = make_request(list(range(1, 13)))
    compute(manager, first, 12)
    second = make_request(list(range(1, 11)) + [60, 61, 62])
    match = manager.match_prefix(second)
    block_ids = manager.allocate_slots(second, second.num_tokens - match.num_tokens, match)
    assert block_ids[:2] == manager.block_ids(first.request_id)[:2]
    assert len(block_ids) == 4  # 13 tokens -> 4 blocks, 2 of them shared
    assert manager.pool.blocks[0].ref_count == 2
    manager.check_integrity()
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 16
    manager.check_integrity()


def test_hit_on_evictable_blocks_counts_them_out_of_the_free_budget():
    manager = KVCacheManager(4, 4)
    first = make_request(list(range(1, 9)) + [9])
    compute(manager, first, 9)  # blocks 0,1 full and cached, block 2 partial
    manager.free(first)
    second = make_request(list(range(1, 9)) + [20, 21, 22, 23, 24, 25, 26, 27, 28])
    match = manager.match_prefix(second)
    assert match.num_tokens == 8
    # 17 tokens need 5 blocks: 2 hits + 3 new, but only 2 non-hit blocks exist.
    assert manager.allocate_slots(second, 9, match) is None
    manager.check_integrity()
    assert manager.allocate_slots(second, 8, match) is not None  # 16 tokens: 2 hits + 2 new
    manager.check_integrity()


def test_salt_and_adapter_separate_caches():
    manager = KVCacheManager(16, 4)
    base = make_request(list(range(1, 10)))
    compute(manager, base, 9)
    salted = make_request(list(range(1, 10)))
    salted.cache_salt = "tenant-b"
    assert manager.match_prefix(salted).num_tokens == 0
    adapted = make_request(list(range(1, 10)))
    adapted.adapter_id = "lora-1"
    assert manager.match_prefix(adapted).num_tokens == 0
    assert manager.match_prefix(make_request(list(range(1, 10)))).num_tokens == 8


def test_caching_disabled_never_matches():
    manager = KVCacheManager(8, 4, enable_prefix_caching=False)
    first = make_request(list(range(1, 10)))
    compute(manager, first, 9)
    assert manager.match_prefix(make_request(list(range(1, 10)))).num_tokens == 0
    assert manager.pool.num_cached_blocks == 0


def test_prompt_logprobs_requests_skip_the_cache():
    manager = KVCacheManager(8, 4)
    compute(manager, make_request(list(range(1, 10))), 9)
    wants = make_request(list(range(1, 10)), prompt_logprobs=0)
    assert manager.match_prefix(wants).num_tokens == 0


def test_eviction_under_pressure_keeps_integrity():
    manager = KVCacheManager(4, 2)
    for start in range(0, 40, 4):
        request = make_request(list(range(start + 1, start + 5)))
        compute(manager, request, 4)
        manager.free(request)
        manager.check_integrity()
    assert manager.stats.prefix_cache_evictions > 0
    assert manager.pool.num_cached_blocks <= 4


@pytest.mark.parametrize("hash_name", ["sha256", "builtin"])
def test_hash_functions_agree_on_hits(hash_name):
    manager = KVCacheManager(8, 4, prefix_hash=hash_name)
    compute(manager, make_request(list(range(1, 10))), 9)
    assert manager.match_prefix(make_request(list(range(1, 10)))).num_tokens == 8


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_operations_keep_the_invariant(seed):
    """Thousands of random admissions, growth, prefix hits, frees: integrity after each one."""
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4])
    manager = KVCacheManager(rng.randint(4, 24), block_size)
    live = []
    vocab = [1, 2, 3]  # tiny vocabulary so prefixes collide often
    for _ in range(150):
        action = rng.random()
        if action < 0.4 or not live:
            request = make_request([rng.choice(vocab) for _ in range(rng.randint(1, 12))])
            match = manager.match_prefix(request)
            num_new = request.num_tokens - match.num_tokens
            if manager.allocate_slots(request, num_new, match) is not None:
                request.num_computed_tokens = request.num_tokens
                manager.cache_blocks(request)
                live.append(request)
        elif action < 0.8:
            request = rng.choice(live)
            request.append_output_token(rng.choice(vocab))
            if manager.allocate_slots(request, 1) is not None:
                request.num_computed_tokens += 1
                manager.cache_blocks(request)
            else:
                live.remove(request)
                manager.free(request)
        else:
            request = live.pop(rng.randrange(len(live)))
            manager.free(request)
        manager.check_integrity()
        for request in live:
            assert manager.num_blocks_held(request.request_id) * block_size >= (
                request.num_computed_tokens
            )
    for request in live:
        manager.free(request)
    manager.check_integrity()
    assert manager.num_free_blocks == manager.num_blocks
