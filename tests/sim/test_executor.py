"""SimExecutor: the executor contract with a real scheduler, and the BatchShape it costs."""

from __future__ import annotations

from corral.config import SchedulerConfig
from corral.core.batch_shape import BatchShape
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.sim.cost.profiled import ProfiledCostModel
from corral.sim.executor import SimExecutor
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID
from tests.core.helpers import make_request


def test_samples_exactly_when_a_chunk_reaches_the_end():
    cost = ProfiledCostModel(["intercept", "tokens"], [1.0, 0.5])
    scheduler = Scheduler(
        SchedulerConfig(max_num_batched_tokens=20), KVCacheManager(64, 16), 4096, clock=lambda: 0
    )
    executor = SimExecutor(cost)
    long, short = (
        make_request(30, max_tokens=3, ignore_eos=True),
        make_request(5, max_tokens=2, ignore_eos=True),
    )
    scheduler.add_request(long)
    scheduler.add_request(short)
    outputs = []
    while scheduler.has_unfinished_requests():
        scheduled = scheduler.schedule()
        model_output = executor.execute(scheduled)
        outputs.append((dict(scheduled.num_scheduled_tokens), model_output))
        scheduler.update(scheduled, model_output)
        scheduler.kv.check_integrity()
    first_tokens, first = outputs[0]
    # step 1: 20 of long's 30 prompt tokens (no sample); short waits (budget spent)
    assert first_tokens == {long.request_id: 20} and first.sampled_token_ids == {}
    assert first.step_time_s == 1.0 + 0.5 * 20
    second_tokens, second = outputs[1]
    assert second_tokens == {long.request_id: 10, short.request_id: 5}
    assert second.sampled_token_ids == {
        long.request_id: [PLACEHOLDER_TOKEN_ID],
        short.request_id: [PLACEHOLDER_TOKEN_ID],
    }
    assert long.output_token_ids == [PLACEHOLDER_TOKEN_ID] * 3
    assert short.output_token_ids == [PLACEHOLDER_TOKEN_ID] * 2


def test_batch_shape_counts_prefill_and_decode_work():
    shape = BatchShape.of_chunks([(10, 6, True), (1, 40, True), (1, 9, True), (4, 0, False)])
    assert shape.num_prefill_tokens == 14 and shape.num_prefill_requests == 2
    assert shape.prefill_context_tokens == 6
    assert shape.prefill_attention_pairs == (10 * 6 + 55) + (0 + 10)
    assert shape.num_decode_requests == 2
    assert shape.decode_context_tokens == 41 + 10 and shape.max_decode_context == 41
    assert shape.num_sampled == 3 and shape.num_tokens == 16


def test_executor_shape_matches_of_chunks():
    scheduler = Scheduler(SchedulerConfig(), KVCacheManager(64, 16), 4096, clock=lambda: 0)
    executor = SimExecutor(ProfiledCostModel(["intercept"], [0.0]))
    first = make_request(20, max_tokens=4, ignore_eos=True)
    scheduler.add_request(first)
    for _ in range(2):
        output = scheduler.schedule()
        scheduler.update(output, executor.execute(output))
    second = make_request(7, max_tokens=2, ignore_eos=True)
    scheduler.add_request(second)
    output = scheduler.schedule()
    executor.execute(output)
    # first is decoding at context 21 (20 prompt + 1 generated); second prefills 7 tokens
    assert executor.last_batch == BatchShape.of_chunks([(1, 21, True), (7, 0, True)])
