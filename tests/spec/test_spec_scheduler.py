"""The scheduler with speculative decoding (fake executor, no torch): outputs are exactly the
target's whatever is accepted; budget, KV slots, rollback, prefix caching and preemption."""

from __future__ import annotations

import random

import pytest

from corral.config import SchedulerConfig, SpeculativeConfig
from corral.core.kv_cache import KVCacheManager, cdiv
from corral.core.scheduler import Scheduler
from corral.request import RequestStatus
from tests.core.helpers import make_request
from tests.spec.fake_spec_executor import FakeSpecExecutor, target_continuation


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    rule: str = "fixed",
    k: int = 4,
    prefix_caching: bool = True,
    num_host_slots: int = 0,
    **scheduler_options: object,
) -> Scheduler:
    kv = KVCacheManager(
        num_blocks,
        block_size,
        enable_prefix_caching=prefix_caching,
        num_host_slots=num_host_slots,
    )
    config = SchedulerConfig(**scheduler_options)  # type: ignore[arg-type]
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=k, num_tokens_rule=rule)
    return Scheduler(config, kv, max_model_len=256, speculative=spec)


def run(executor: FakeSpecExecutor, max_steps: int = 20_000) -> dict[str, list[int]]:
    outputs: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not executor.scheduler.has_unfinished_requests():
            return outputs
        for update in executor.step():
            outputs.setdefault(update.request_id, []).extend(update.new_token_ids)
        check_books(executor.scheduler)
    raise AssertionError("did not finish")


def check_books(scheduler: Scheduler) -> None:
    """After every step: no request holds a block of rejected tokens only, computed <= total,
    and every block registered in the prefix cache holds verified tokens only."""
    kv = scheduler.kv
    for request in scheduler.running:
        assert 0 <= request.num_computed_tokens <= request.num_tokens
        held = kv.num_blocks_held(request.request_id)
        assert held <= cdiv(request.num_tokens, kv.block_size), (request, held)
        registered = kv._num_registered[request.request_id]
        assert registered * kv.block_size <= request.num_computed_tokens
        assert len(request.spec_token_ids) <= scheduler.spec.config.num_speculative_tokens


def test_drafts_take_budget_and_slots_and_roll_back() -> None:
    scheduler = make_scheduler(k=3)
    executor = FakeSpecExecutor(scheduler, accuracy=0.0)
    request = make_request(6, max_tokens=20)
    scheduler.add_request(request)
    executor.step()  # prefill: samples one token, asks for 3 proposals
    assert request.num_tokens == 7 and request.num_computed_tokens == 6
    assert len(request.spec_token_ids) == 3
    output = scheduler.schedule()
    assert output.num_scheduled_tokens[request.request_id] == 4  # 1 real + 3 drafts
    assert output.spec_token_ids[request.request_id] == request.spec_token_ids
    assert scheduler.kv.num_blocks_held(request.request_id) == cdiv(7 + 3, 4)
    scheduler.update(output, executor.execute(output))
    # All three wrong: one token from the target, computed rolled back past the drafts.
    assert request.num_tokens == 8 and request.num_computed_tokens == 7
    assert scheduler.kv.num_blocks_held(request.request_id) == 2
    assert scheduler.spec.controller.stats.num_draft_tokens == 3
    assert scheduler.spec.controller.stats.num_accepted_tokens == 0


def test_all_accepted_gives_k_plus_one_tokens() -> None:
    scheduler = make_scheduler(k=4)
    executor = FakeSpecExecutor(scheduler, accuracy=1.0)
    request = make_request(5, max_tokens=30)
    scheduler.add_request(request)
    executor.step()
    updates = executor.step()
    assert len(updates[0].new_token_ids) == 5
    assert request.num_computed_tokens == request.num_tokens - 1
    stats = scheduler.spec.controller.stats
    assert stats.num_accepted_tokens_per_pos == [1, 1, 1, 1]
    assert stats.mean_accepted_length == 5.0


def test_max_tokens_and_context_cap_the_drafts() -> None:
    scheduler = make_scheduler(k=8)
    executor = FakeSpecExecutor(scheduler, accuracy=1.0)
    request = make_request(5, max_tokens=4)
    scheduler.add_request(request)
    outputs = run(executor)
    assert outputs[request.request_id] == target_continuation(list(range(1, 6)), 4)
    assert request.status == RequestStatus.FINISHED_LENGTH


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("rule", ["fixed", "adaptive"])
def test_outputs_are_the_targets_whatever_is_accepted(accuracy: float, rule: str) -> None:
    scheduler = make_scheduler(rule=rule, max_num_batched_tokens=24)
    executor = FakeSpecExecutor(scheduler, accuracy=accuracy, seed=3)
    prompts = {f"q{i}": [i + 1, i + 2, i + 3] * (i + 1) for i in range(6)}
    for request_id, prompt in prompts.items():
        scheduler.add_request(make_request(prompt, max_tokens=25, request_id=request_id))
    outputs = run(executor)
    for request_id, prompt in prompts.items():
        assert outputs[request_id] == target_continuation(prompt, 25), request_id
    if accuracy > 0 and rule == "fixed":
        assert scheduler.spec.controller.stats.num_accepted_tokens > 0
    assert scheduler.kv.usage == 0.0


@pytest.mark.parametrize("seed", range(10))
def test_random_load_keeps_kv_integrity(seed: int) -> None:
    """Thousands of steps with random arrivals, aborts, acceptances, a pool small enough to
    preempt (recompute or swap), prefix sharing: integrity after every step, exact outputs."""
    rng = random.Random(seed)
    swap = seed % 2 == 1
    policy = ("fcfs", "priority", "mlfq", "fair", "edf")[seed % 5]
    scheduler = make_scheduler(
        policy=policy,
        num_blocks=40,
        block_size=4,
        rule="fixed" if seed % 3 else "adaptive",
        k=rng.choice([1, 3, 5]),
        num_host_slots=64 if swap else 0,
        preemption_mode="swap" if swap else "recompute",
        max_num_batched_tokens=rng.choice([8, 16, 64]),
        max_num_seqs=8,
    )
    executor = FakeSpecExecutor(scheduler, accuracy=rng.random(), seed=seed)
    shared = [rng.randrange(1, 60) for _ in range(9)]
    expected: dict[str, list[int]] = {}
    aborted: set[str] = set()
    outputs: dict[str, list[int]] = {}
    num_steps = 0
    next_id = 0
    while num_steps < 1500 and (next_id < 60 or scheduler.has_unfinished_requests()):
        if next_id < 60 and rng.random() < 0.3:
            prompt = (shared if rng.random() < 0.5 else []) + [
                rng.randrange(1, 60) for _ in range(rng.randrange(1, 20))
            ]
            max_tokens = rng.randrange(1, 30)
            request_id = f"s{next_id}"
            next_id += 1
            request = make_request(prompt, max_tokens, request_id=request_id)
            request.priority = rng.randrange(3)
            request.client_id = f"c{rng.randrange(3)}"
            request.deadline_s = rng.random() * 10
            scheduler.add_request(request)
            expected[request_id] = target_continuation(prompt, max_tokens)
        if scheduler.requests and rng.random() < 0.02:
            victim = rng.choice(sorted(scheduler.requests))
            scheduler.finish_requests([victim])
            aborted.add(victim)
        for update in executor.step():
            outputs.setdefault(update.request_id, []).extend(update.new_token_ids)
        check_books(scheduler)
        num_steps += 1
    assert not scheduler.has_unfinished_requests()
    assert executor.num_verified_drafts > 0
    for request_id, tokens in expected.items():
        got = outputs.get(request_id, [])
        if request_id in aborted:
            assert got == tokens[: len(got)]
        else:
            assert got == tokens, request_id
    scheduler.kv.check_integrity()
    assert scheduler.kv.usage == 0.0
