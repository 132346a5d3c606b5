"""KV reservation at admission (none / max / predicted S3-style) and the KeyedQueue."""

from __future__ import annotations

import pytest

from corral.core.policies.keyed_queue import KeyedQueue
from corral.core.reservation import make_reservation
from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler


def run_batch(reservation: str, predicted_scale: float) -> tuple[int, int]:
    """Eight requests of 4 prompt + 12 output tokens (4 blocks each) whose max_tokens allow 28
    (8 blocks), on 16 blocks. Returns (preemptions, the largest number running at once)."""
    clock = VirtualClock()
    scheduler = make_policy_scheduler(
        "fcfs", clock, num_blocks=16, block_size=4, max_num_seqs=8, kv_reservation=reservation
    )
    driver = Driver(scheduler, clock)
    requests = []
    for _ in range(8):
        request = job(0.0, 28, num_prompt_tokens=4)
        request.sampling_params.stop_token_ids = []
        request.predicted_num_output_tokens = round(12 * predicted_scale)
        requests.append(request)
    # The fake executor samples token 7; stop each request at exactly 12 output tokens.
    driver.fake.next_token = lambda rid, position: 0 if position == 4 + 11 else 7
    driver.submit(*requests)
    max_running = 0
    while driver.pending or scheduler.has_unfinished_requests():
        driver.step()
        max_running = max(max_running, scheduler.num_running)
    assert all(r.num_output_tokens == 12 for r in requests)
    return scheduler.num_preemptions, max_running


def test_on_demand_admits_everything_and_then_preempts():
    preemptions, max_running = run_batch("none", 1.0)
    assert preemptions > 0 and max_running == 8


def test_worst_case_reservation_never_preempts_but_runs_few():
    preemptions, max_running = run_batch("max", 1.0)
    assert preemptions == 0 and max_running == 2  # 8 blocks each


def test_predicted_reservation_runs_more_without_preempting():
    preemptions, max_running = run_batch("predicted:headroom=0", 1.0)
    assert preemptions == 0 and max_running == 4  # 4 blocks each, as predicted
    # Underestimates fall back on preemption, as with on-demand paging.
    preemptions, _ = run_batch("predicted:headroom=0", 0.5)
    assert preemptions > 0


def test_reservation_spec_errors():
    with pytest.raises(ValueError, match="unknown kv reservation"):
        make_reservation("some")
    with pytest.raises(ValueError, match="headroom must be >= 0"):
        make_reservation("predicted:headroom=-1")


def test_keyed_queue_orders_removes_lazily_and_stays_compact():
    queue = KeyedQueue()
    requests = [job(float(i), 1) for i in range(500)]
    for i, request in enumerate(requests):
        queue.push(request, (i % 7, i))
    for request in requests[::2]:
        assert queue.remove(request)
    assert not queue.remove(requests[0])
    assert len(queue) == 250
    assert len(queue._heap) <= 2 * len(queue) + 64  # stale entries were compacted away
    order = [queue.pop() for _ in range(len(queue))]
    expected = sorted(requests[1::2], key=lambda r: (int(r.arrival_time) % 7, r.arrival_time))
    assert order == expected
    assert queue.peek() is None


def test_a_reservation_blocked_arrival_preempts_only_what_it_needs():
    clock = VirtualClock()
    # 16 blocks of 4; each request reserves 4 prompt + 12 output tokens = 4 blocks.
    scheduler = make_policy_scheduler(
        "priority", clock, num_blocks=16, block_size=4, max_num_seqs=8, kv_reservation="max"
    )
    driver = Driver(scheduler, clock)
    low = [job(0.0, 12, num_prompt_tokens=4, priority=1) for _ in range(4)]
    driver.submit(*low)
    driver.step()
    assert scheduler.num_running == 4
    urgent = job(1.0, 12, num_prompt_tokens=4, priority=0, request_id="urgent")
    driver.submit(urgent)
    driver.step()
    assert scheduler.num_preemptions == 1 and urgent.status.name == "RUNNING"
    driver.run()
    assert all(r.num_output_tokens == 12 for r in [*low, urgent])
