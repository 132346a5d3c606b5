from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.request import RequestStatus
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request


def make_scheduler(
    num_blocks: int = 64, block_size: int = 4, max_model_len: int = 4096, **config: object
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(**config),  # type: ignore[arg-type]
        KVCacheManager(num_blocks, block_size),
        max_model_len,
    )


def test_token_budget_chunks_a_long_prompt_and_batches_decodes():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    long = make_request(25, max_tokens=3)
    short = make_request(3, max_tokens=3)
    scheduler.add_request(long)
    scheduler.add_request(short)
    fake = FakeExecutor(scheduler)
    first = scheduler.schedule()
    assert first.num_scheduled_tokens == {long.request_id: 10}
    scheduler.update(first, fake.execute(first))
    second = scheduler.schedule()
    assert second.num_scheduled_tokens == {long.request_id: 10}
    scheduler.update(second, fake.execute(second))
    # The last 5 prompt tokens of `long` and all 3 of `short` fit in one mixed step.
    third = scheduler.schedule()
    assert third.num_scheduled_tokens == {long.request_id: 5, short.request_id: 3}
    assert [n.request_id for n in third.new_requests] == [short.request_id]
    updates = scheduler.update(third, fake.execute(third))
    assert {u.request_id for u in updates} == {long.request_id, short.request_id}
    # Now both decode: one token each.
    fourth = scheduler.schedule()
    assert fourth.num_scheduled_tokens == {long.request_id: 1, short.request_id: 1}
    assert fourth.total_num_scheduled_tokens == 2


def test_no_chunking_admits_whole_prompts_only():
    scheduler = make_scheduler(
        max_num_batched_tokens=16, enable_chunked_prefill=False, max_model_len=16
    )
    first, second = make_request(10, max_tokens=2), make_request(10, max_tokens=2)
    scheduler.add_request(first)
    scheduler.add_request(second)
    output = scheduler.schedule()
    assert output.num_scheduled_tokens == {first.request_id: 10}


def test_chunked_prefill_off_needs_a_budget_of_the_context():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        make_scheduler(max_num_batched_tokens=8, enable_chunked_prefill=False, max_model_len=16)


def test_long_prefill_threshold_caps_each_chunk():
    scheduler = make_scheduler(max_num_batched_tokens=100, long_prefill_token_threshold=8)
    request = make_request(30)
    scheduler.add_request(request)
    assert scheduler.schedule().num_scheduled_tokens == {request.request_id: 8}


def test_max_num_seqs_bounds_the_running_set():
    scheduler = make_scheduler(max_num_seqs=2)
    requests = [make_request(3, max_tokens=2) for _ in range(3)]
    for request in requests:
        scheduler.add_request(request)
    fake = FakeExecutor(scheduler)
    output = scheduler.schedule()
    assert set(output.num_scheduled_tokens) == {r.request_id for r in requests[:2]}
    assert scheduler.num_waiting == 1
    scheduler.update(output, fake.execute(output))
    outputs = fake.run()
    assert all(len(outputs[r.request_id]) == 2 for r in requests[2:])
    assert all(r.num_output_tokens == 2 for r in requests)


def test_finishes_on_length_eos_and_stop_token_ids():
    scheduler = make_scheduler()
    by_length = make_request(3, max_tokens=3)
    by_eos = make_request(3, max_tokens=10)
    by_stop = make_request(3, max_tokens=10, stop_token_ids=[5])
    ignoring = make_request(3, max_tokens=4, ignore_eos=True)
    min_tokens = make_request(3, max_tokens=10, min_tokens=3)
    for request in (by_length, by_eos, by_stop, ignoring, min_tokens):
        scheduler.add_request(request)
    scripts = {
        by_eos.request_id: 0,
        by_stop.request_id: 5,
        ignoring.request_id: 0,
        min_tokens.request_id: 0,
    }
    fake = FakeExecutor(scheduler, lambda rid, pos: scripts.get(rid, 7))
    finish = {}
    for _ in range(20):
        for update in fake.step():
            if update.finish_reason:
                finish[update.request_id] = (update.finish_reason, update.stop_reason)
    assert finish[by_length.request_id] == ("length", None)
    assert finish[by_eos.request_id] == ("stop", None)
    assert finish[by_stop.request_id] == ("stop", 5)
    assert finish[ignoring.request_id] == ("length", None)
    assert finish[min_tokens.request_id] == ("stop", None)
    assert min_tokens.num_output_tokens == 3
    assert ignoring.num_output_tokens == 4
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks


def test_context_length_ends_a_request():
    scheduler = make_scheduler(max_model_len=8)
    request = make_request(5, max_tokens=None, max_model_len=8)
    scheduler.add_request(request)
    FakeExecutor(scheduler).run()
    assert request.num_tokens == 8 and request.status == RequestStatus.FINISHED_LENGTH


def test_preemption_by_recompute_when_blocks_run_out_and_resumption():
    # 6 blocks of 4 slots: two requests of 8 prompt tokens need 2 blocks each, then grow.
    scheduler = make_scheduler(num_blocks=6, block_size=4)
    first = make_request(8, max_tokens=12)
    second = make_request(8, max_tokens=12)
    scheduler.add_request(first)
    scheduler.add_request(second)
    fake = FakeExecutor(scheduler)
    outputs = fake.run()
    assert scheduler.num_preemptions >= 1
    # FCFS: the newest running request is the victim, so `second` was preempted.
    assert second.num_preemptions >= 1 and first.num_preemptions == 0
    assert len(outputs[first.request_id]) == 12 and len(outputs[second.request_id]) == 12
    resumed = [
        new
        for step in fake.steps
        for new in step.new_requests
        if new.request_id == second.request_id and new.num_prompt_tokens < len(new.token_ids)
    ]
    assert resumed, "the victim was re-sent with its generated tokens"
    assert resumed[0].token_ids[:8] == second.prompt_token_ids
    assert scheduler.kv.num_free_blocks == 6


def test_waiting_requests_are_not_admitted_in_a_step_that_preempted():
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    first = make_request(8, max_tokens=20)
    second = make_request(7, max_tokens=20)
    scheduler.add_request(first)
    scheduler.add_request(second)
    fake = FakeExecutor(scheduler)
    for _ in range(3):
        fake.step()
    waiting = make_request(2, max_tokens=2)
    scheduler.add_request(waiting)
    for _ in range(30):
        output = scheduler.schedule()
        if output.preempted_request_ids:
            assert waiting.request_id not in output.num_scheduled_tokens
            break
        scheduler.update(output, fake.execute(output))
    else:
        pytest.fail("expected a preemption")


def test_abort_at_any_time_returns_blocks():
    scheduler = make_scheduler(max_num_batched_tokens=6)
    waiting = make_request(4)
    prefilling = make_request(20)
    decoding = make_request(3, max_tokens=50)
    scheduler.add_request(decoding)
    fake = FakeExecutor(scheduler)
    fake.step()
    scheduler.add_request(prefilling)
    fake.step()
    scheduler.add_request(waiting)
    assert prefilling.status == RequestStatus.RUNNING and prefilling.num_computed_tokens < 20
    aborted = scheduler.finish_requests(
        [waiting.request_id, prefilling.request_id, decoding.request_id, "unknown"]
    )
    assert {r.request_id for r in aborted} == {
        waiting.request_id,
        prefilling.request_id,
        decoding.request_id,
    }
    assert all(r.status == RequestStatus.FINISHED_ABORTED for r in aborted)
    assert not scheduler.has_unfinished_requests() and scheduler.num_waiting == 0
    scheduler.kv.check_integrity()
    assert scheduler.kv.num_free_blocks == scheduler.kv.num_blocks
    output = scheduler.schedule()
    assert output.is_empty
    assert {prefilling.request_id, decoding.request_id} <= output.finished_request_ids


def test_abort_between_schedule_and_update_is_ignored_by_update():
    scheduler = make_scheduler()
    request = make_request(5)
    scheduler.add_request(request)
    fake = FakeExecutor(scheduler)
    output = scheduler.schedule()
    model_output = fake.execute(output)
    scheduler.finish_requests([request.request_id])
    assert scheduler.update(output, model_output) == []
    scheduler.kv.check_integrity()


def test_prefix_hit_skips_computation():
    scheduler = make_scheduler(num_blocks=32, block_size=4)
    first = make_request(list(range(1, 18)), max_tokens=2)
    scheduler.add_request(first)
    FakeExecutor(scheduler).run()
    second = make_request(list(range(1, 18)), max_tokens=2)
    scheduler.add_request(second)
    output = scheduler.schedule()
    # 17 tokens: 4 full blocks cached (16 tokens), the last token is computed.
    assert output.num_scheduled_tokens == {second.request_id: 1}
    assert output.new_requests[0].num_computed_tokens == 16
    assert second.num_cached_tokens == 16
    stats = scheduler.stats()
    assert stats.prefix_hit_tokens == 16 and stats.prefix_query_tokens == 34


def test_duplicate_ids_are_refused():
    scheduler = make_scheduler()
    scheduler.add_request(make_request(3, request_id="same"))
    with pytest.raises(ValueError, match="already in use"):
        scheduler.add_request(make_request(3, request_id="same"))


def test_many_requests_complete_with_exact_lengths_under_pressure():
    scheduler = make_scheduler(
        num_blocks=20, block_size=4, max_num_batched_tokens=16, max_num_seqs=6
    )
    requests = [make_request(1 + (i * 7) % 23, max_tokens=1 + (i * 5) % 11) for i in range(30)]
    for request in requests:
        scheduler.add_request(request)
    outputs = FakeExecutor(scheduler).run()
    for request in requests:
        assert len(outputs[request.request_id]) == request.max_tokens
        assert request.status == RequestStatus.FINISHED_LENGTH
    assert scheduler.kv.num_free_blocks == 20
