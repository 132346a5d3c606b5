"""Request tracing's intervals in the scheduler: a preempted request records each preemption
(mode, tokens held and recomputed) from losing its KV to being scheduled again, the step's
SchedulerOutput names it for the step log, and the request's last update carries them; a
request never preempted records nothing."""

from __future__ import annotations

import itertools

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.request_times import PREEMPTION
from corral.core.scheduler import Scheduler
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request


@pytest.mark.parametrize(("mode", "prefix_caching"), [("recompute", False), ("swap", False),
                                                      ("recompute", True)])  # fmt: skip
def test_a_preemption_is_an_interval_until_the_victim_runs_again(mode, prefix_caching):
    kv = KVCacheManager(
        6, 4, enable_prefix_caching=prefix_caching, num_host_slots=16 if mode == "swap" else 0
    )
    scheduler = Scheduler(SchedulerConfig(preemption_mode=mode), kv, 4096)
    ticks = itertools.count()
    scheduler.clock = lambda: float(next(ticks))  # a virtual clock, as in the simulator
    first, second = make_request(8, max_tokens=12), make_request(8, max_tokens=12)
    scheduler.add_request(first)
    scheduler.add_request(second)
    fake = FakeExecutor(scheduler)
    last_updates = {}
    while scheduler.has_unfinished_requests():
        for update in fake.step():
            last_updates[update.request_id] = update
    assert first.num_preemptions == 0 and first.intervals is None
    assert last_updates[first.request_id].intervals is None
    assert second.num_preemptions >= 1
    intervals = last_updates[second.request_id].intervals
    assert intervals is second.intervals
    assert [i.kind for i in intervals] == [PREEMPTION] * second.num_preemptions
    for interval in intervals:
        assert interval.detail == mode
        assert interval.start_s <= interval.end_s
        assert interval.num_tokens > 0
        if mode == "swap":
            assert interval.num_recomputed_tokens == 0
        elif prefix_caching:  # its full blocks may still be cached when it resumes
            assert 0 <= interval.num_recomputed_tokens <= interval.num_tokens
        else:
            assert interval.num_recomputed_tokens == interval.num_tokens
    # Each preempting step named the victim's preemption for the step log.
    logged = [
        preemption
        for step in fake.steps
        if step.preemptions
        for request_id, preemption in step.preemptions.items()
        if request_id == second.request_id
    ]
    assert logged == intervals
    assert all(step.preemptions is None for step in fake.steps if not step.preempted_request_ids)
