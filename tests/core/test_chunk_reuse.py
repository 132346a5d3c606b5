"""ChunkReuse in the scheduler (torch-free, with the fake executor): a blended request runs all
its tokens in one step but counts only the recomputed ones against the budget, its chunks'
store blocks are held for the step and stay cached after, store hits and misses, prefix-cache
registration stops at the first copied token, and a blend that never fits falls back."""

from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request

BLOCK_SIZE = 16
SYSTEM = list(range(1000, 1020))  # 20 tokens
CHUNK_A = list(range(2000, 2050))  # 50 tokens
CHUNK_B = list(range(3000, 3040))  # 40 tokens
QUESTION = list(range(4000, 4010))  # 10 tokens


def _rag_request(chunks, question=QUESTION, **fields):
    prompt = list(SYSTEM)
    spans = []
    for chunk in chunks:
        spans.append((len(prompt), len(chunk)))
        prompt += chunk
    request = make_request(prompt + question, max_tokens=2, **fields)
    request.rag_chunk_spans = tuple(spans)
    return request


def _scheduler(ratio=0.2, budget=512, num_blocks=64):
    kv = KVCacheManager(num_blocks, BLOCK_SIZE)
    config = SchedulerConfig(
        max_num_batched_tokens=budget, rag_chunk_reuse=True, rag_recompute_ratio=ratio
    )
    return Scheduler(config, kv, 4096)


def test_a_blend_runs_every_token_and_counts_the_recomputed_ones():
    scheduler = _scheduler()
    executor = FakeExecutor(scheduler)
    first = _rag_request([CHUNK_A, CHUNK_B])
    scheduler.add_request(first)
    output = scheduler.schedule()
    plan = output.chunk_reuse
    # Both chunks are new: computed alone first, then copied.
    assert [len(p.token_ids) for p in plan.prefills] == [50, 40]
    blend = plan.blends[first.request_id]
    assert (blend.start, blend.end) == (0, first.num_tokens - 1)
    assert [(c.position, c.num_tokens, c.num_recompute) for c in blend.copies] == [
        (20, 50, 10),
        (70, 40, 8),
    ]
    assert output.num_scheduled_tokens[first.request_id] == first.num_tokens
    # Stored chunks are held (not evictable) while the step runs.
    for prefill in plan.prefills:
        assert all(scheduler.kv.pool.blocks[b].ref_count == 1 for b in prefill.block_ids)
    scheduler.update(output, executor.execute(output))
    scheduler.kv.check_integrity()
    for prefill in plan.prefills:
        assert all(scheduler.kv.pool.blocks[b].ref_count == 0 for b in prefill.block_ids)
        assert all(scheduler.kv.pool.blocks[b].block_hash is not None for b in prefill.block_ids)
    # Only the block before the first chunk's block could be exact: none here (20 tokens of
    # system prompt end inside block 1, which holds chunk tokens).
    assert first.rag_num_exact_tokens == BLOCK_SIZE
    assert scheduler.kv.num_cached_blocks(first.request_id) == 1

    second = _rag_request([CHUNK_B, CHUNK_A], question=list(range(5000, 5030)))
    scheduler.add_request(second)
    output = scheduler.schedule()
    assert output.chunk_reuse.prefills == []  # both chunks are stored
    blend = output.chunk_reuse.blends[second.request_id]
    assert blend.start == BLOCK_SIZE  # the system prompt's full block is a prefix hit
    stats = scheduler.stats().rag_chunks
    assert (stats.num_chunk_misses, stats.num_chunk_hits) == (2, 2)
    # Scheduled: every token past the hit (the budget is charged 4 system tokens + 30 question
    # tokens + 18 recomputed chunk tokens: see the next test), next to the first's decode.
    scheduled = output.num_scheduled_tokens[second.request_id]
    assert scheduled == second.num_tokens - BLOCK_SIZE == 124
    assert output.num_scheduled_tokens[first.request_id] == 1
    scheduler.update(output, executor.execute(output))
    executor.run()
    scheduler.kv.check_integrity()


def test_the_budget_left_admits_others_in_the_same_step():
    scheduler = _scheduler(ratio=0.0, budget=64)
    executor = FakeExecutor(scheduler)
    warm = make_request(CHUNK_A + [9], max_tokens=2)  # 1 token + the chunk alone: 51 counted
    warm.rag_chunk_spans = ((0, len(CHUNK_A)),)
    scheduler.add_request(warm)
    executor.run()
    assert scheduler.stats().rag_chunks.num_chunk_misses == 1  # the chunk is stored now
    blended = _rag_request([CHUNK_A], question=list(range(6000, 6005)))
    plain = make_request(list(range(7000, 7030)), max_tokens=2)
    scheduler.add_request(blended)
    scheduler.add_request(plain)
    output = scheduler.schedule()
    # blended: 75 tokens scheduled, 20 + 5 counted; plain: 30; within a 64-token budget.
    assert output.num_scheduled_tokens == {blended.request_id: 75, plain.request_id: 30}
    assert scheduler.stats().rag_chunks.num_chunk_hits == 1
    scheduler.update(output, executor.execute(output))
    executor.run()


def test_a_blend_larger_than_any_step_falls_back_to_an_ordinary_prefill():
    scheduler = _scheduler(ratio=1.0, budget=32)
    executor = FakeExecutor(scheduler)
    request = _rag_request([CHUNK_A])
    scheduler.add_request(request)
    output = scheduler.schedule()
    assert output.chunk_reuse is None
    assert output.num_scheduled_tokens[request.request_id] == 32  # chunked prefill as usual
    scheduler.update(output, executor.execute(output))
    executor.run()
    assert request.rag_num_exact_tokens is None
    assert scheduler.stats().rag_chunks.num_blended_requests == 0


def test_refused_without_prefix_caching_and_out_of_range_ratio():
    with pytest.raises(ValueError, match="prefix caching"):
        Scheduler(
            SchedulerConfig(rag_chunk_reuse=True),
            KVCacheManager(16, BLOCK_SIZE, enable_prefix_caching=False),
            1024,
        )
    with pytest.raises(ValueError, match="rag_recompute_ratio"):
        SchedulerConfig(rag_chunk_reuse=True, rag_recompute_ratio=1.5)
