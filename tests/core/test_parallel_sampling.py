"""Parallel sampling on the control plane: the n samples of one request compute the prompt's full
blocks once (the others wait for them and take them as prefix hits), never hang when the sample
computing them is aborted or preempted, and keep every scheduling policy working."""

from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.request import Request, RequestStatus
from corral.sampling_params import SamplingParams
from tests.core.fake_executor import FakeExecutor

BLOCK = 16
PROMPT = list(range(1, 71))  # 70 tokens: 4 full blocks shared, 6 tokens per sample after them


def samples(
    n: int, parent: str = "p", prompt: list[int] = PROMPT, max_tokens: int = 4, **params
) -> list[Request]:
    """The n children make_requests builds for one request (ids "{i}_{parent}", seed + i)."""
    return [
        Request(
            f"{i}_{parent}",
            prompt,
            SamplingParams(max_tokens=max_tokens, seed=10 + i, **params),
            eos_token_ids=frozenset({0}),
            max_model_len=1024,
            arrival_time=0.0,
            sibling_group=parent,
        )
        for i in range(n)
    ]


def make_scheduler(
    num_blocks: int = 64, prefix_caching: bool = True, **config
) -> tuple[Scheduler, FakeExecutor]:
    kv = KVCacheManager(num_blocks, BLOCK, enable_prefix_caching=prefix_caching)
    scheduler = Scheduler(SchedulerConfig(**config), kv, max_model_len=1024, clock=lambda: 0.0)
    return scheduler, FakeExecutor(scheduler)


def distinct_blocks_held(scheduler: Scheduler) -> set[int]:
    return {b for rid in scheduler.requests for b in scheduler.kv.block_ids(rid)}


def test_n_samples_hold_the_prompt_full_blocks_once():
    scheduler, executor = make_scheduler()
    children = samples(4)
    for child in children:
        scheduler.add_request(child)
    first = scheduler.schedule()
    # One sample computes the prompt; the other three wait for its blocks.
    assert first.num_scheduled_tokens == {"0_p": 70}
    assert scheduler.num_waiting == 3 and scheduler.siblings.num_deferred == 3
    scheduler.update(first, executor.execute(first))
    assert len(distinct_blocks_held(scheduler)) == 5  # 4 full prompt blocks + its partial one
    second = scheduler.schedule()
    # The three start with the 4 full blocks as prefix hits and compute the 6-token tail.
    assert second.num_scheduled_tokens == {"0_p": 1, "1_p": 6, "2_p": 6, "3_p": 6}
    assert all(scheduler.requests[c.request_id].num_cached_tokens == 64 for c in children[1:])
    tables = [scheduler.kv.block_ids(c.request_id) for c in children]
    shared = tables[0][:4]
    assert all(table[:4] == shared for table in tables)
    assert len({table[4] for table in tables}) == 4  # the partial block is each sample's own
    pool = scheduler.kv.pool
    assert [pool.blocks[b].ref_count for b in shared] == [4, 4, 4, 4]
    assert len(distinct_blocks_held(scheduler)) == 4 + 4  # not 4 * 5
    scheduler.update(second, executor.execute(second))
    outputs = executor.run()
    # The rest of max_tokens (4): the leader sampled 2 tokens so far, the others 1.
    assert {rid: len(tokens) for rid, tokens in outputs.items()} == {
        "0_p": 2, "1_p": 3, "2_p": 3, "3_p": 3
    }  # fmt: skip
    assert scheduler.kv.stats.prefix_hit_tokens == 3 * 64


@pytest.mark.parametrize("switch", ["share_off", "prefix_caching_off"])
def test_without_sharing_every_sample_computes_the_prompt(switch):
    if switch == "share_off":
        scheduler, executor = make_scheduler(share_sibling_prompts=False)
    else:
        scheduler, executor = make_scheduler(prefix_caching=False)
        assert scheduler.siblings is None
    for child in samples(4):
        scheduler.add_request(child)
    first = scheduler.schedule()
    assert first.num_scheduled_tokens == {f"{i}_p": 70 for i in range(4)}
    scheduler.update(first, executor.execute(first))
    assert len(distinct_blocks_held(scheduler)) == 4 * 5


def test_chunked_prompt_waits_for_the_last_full_block():
    scheduler, executor = make_scheduler(max_num_batched_tokens=32)
    children = samples(3)
    for child in children:
        scheduler.add_request(child)
    for _ in range(2):  # 64 of 70 tokens: every full block computed, not the tail yet
        executor.step()
        assert set(scheduler.running) == {children[0]}
    executor.step()  # the leader's tail; the others start now with 64 tokens hit
    assert scheduler.num_waiting == 0
    assert children[1].num_cached_tokens == children[2].num_cached_tokens == 64
    executor.run()
    assert scheduler.kv.stats.prefix_hit_tokens == 2 * 64


def test_other_requests_overtake_the_waiting_samples():
    scheduler, executor = make_scheduler(max_num_batched_tokens=128)
    for child in samples(3):
        scheduler.add_request(child)
    other = Request(
        "other",
        list(range(500, 520)),
        SamplingParams(max_tokens=2),
        max_model_len=1024,
        arrival_time=1.0,
    )
    scheduler.add_request(other)
    first = scheduler.schedule()
    assert first.num_scheduled_tokens == {"0_p": 70, "other": 20}
    scheduler.update(first, executor.execute(first))
    executor.run()


def test_aborted_leader_lets_the_waiting_samples_start():
    scheduler, executor = make_scheduler(long_prefill_token_threshold=32)
    children = samples(4)
    for child in children:
        scheduler.add_request(child)
    executor.step()  # the leader computed 32 tokens; the others stepped aside for it
    assert scheduler.running == [children[0]] and scheduler.siblings.num_deferred == 3
    scheduler.finish_requests(["0_p"])
    executor.step()  # the first waiting sample leads now, with the leader's 2 blocks as hits
    assert scheduler.running == [children[1]] and children[1].num_cached_tokens == 32
    assert scheduler.num_waiting == 2
    scheduler.finish_requests(["3_p"])  # a waiting sample aborted
    assert scheduler.num_waiting == 1 and scheduler.siblings.deferred == [children[2]]
    outputs = executor.run()
    assert sorted(outputs) == ["1_p", "2_p"]
    assert all(len(tokens) == 4 for tokens in outputs.values())
    assert children[2].num_cached_tokens == 64


def test_preempted_leader_lets_the_waiting_samples_start():
    scheduler, executor = make_scheduler(long_prefill_token_threshold=32)
    children = samples(3)
    for child in children:
        scheduler.add_request(child)
    executor.step()
    assert scheduler.siblings.num_deferred == 2
    scheduler._preempt(children[0])  # as when the KV blocks run out
    executor.known.discard("0_p")  # (a step's output would have told it)
    assert children[0].status == RequestStatus.PREEMPTED
    executor.step()
    # The first deferred sample comes first and leads; the preempted one waits for it.
    assert [r.request_id for r in scheduler.running] == ["1_p"]
    outputs = executor.run()
    assert all(len(outputs[c.request_id]) == 4 for c in children)


@pytest.mark.parametrize("num_blocks", [12, 16, 24])
def test_samples_finish_under_kv_pressure(num_blocks):
    """Long outputs in a small pool: samples are preempted (leaders among them) and all finish,
    with the pool's integrity checked after every step."""
    scheduler, executor = make_scheduler(num_blocks=num_blocks, max_num_batched_tokens=48)
    children = samples(4, max_tokens=40) + samples(3, parent="q", prompt=PROMPT[:40], max_tokens=40)
    for child in children:
        scheduler.add_request(child)
    outputs = executor.run()
    assert all(len(outputs[c.request_id]) == 40 for c in children)
    assert scheduler.num_preemptions > 0
    assert not scheduler.siblings.deferred


@pytest.mark.parametrize("policy", ["fcfs", "priority", "sjf", "srpt", "mlfq", "fair", "edf"])
def test_every_policy_shares_the_prompt(policy):
    scheduler, executor = make_scheduler(policy=policy)
    children = samples(4)
    for child in children:
        scheduler.add_request(child)
    outputs = executor.run()
    assert all(len(outputs[c.request_id]) == 4 for c in children)
    assert scheduler.kv.stats.prefix_hit_tokens == 3 * 64


def test_prompt_logprobs_sample_never_waits():
    """Child 0 scores the prompt (prompt logprobs: no prefix hits); it may lead, never wait."""
    scheduler, executor = make_scheduler()
    children = samples(3)
    children[0].sampling_params = children[0].sampling_params.clone(prompt_logprobs=0)
    for child in reversed(children):
        scheduler.add_request(child)
    first = scheduler.schedule()
    assert set(first.num_scheduled_tokens) == {"2_p", "0_p"}
    scheduler.update(first, executor.execute(first))
    executor.run()
    assert children[1].num_cached_tokens == 64
