"""Earliest deadline first, deadlines from the request or its SLO class, expired requests
demoted, and the shared SLO attainment counters."""

from __future__ import annotations

import pytest

from corral.core.policies import make_policy
from corral.core.slo import SLOTracker
from corral.core.slo_target import SLO
from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler


def test_earliest_deadline_first_with_request_and_class_deadlines():
    clock = VirtualClock()
    scheduler = make_policy_scheduler("edf:class_deadlines_s=0:100|1:5", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    driver.submit(
        job(0.0, 2, request_id="class0"),  # deadline 100 (class 0)
        job(0.0, 2, priority=1, request_id="class1"),  # deadline 5 (class 1)
        job(0.0, 2, deadline_s=3.0, request_id="own"),  # its own deadline wins: 3
        job(0.0, 2, priority=7, request_id="none"),  # no deadline: last
    )
    run = driver.run()
    assert sorted(run.finish_s, key=run.finish_s.get) == ["own", "class1", "class0", "none"]


def test_expired_requests_yield_to_those_that_can_still_make_it():
    clock = VirtualClock()
    scheduler = make_policy_scheduler("edf", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    blocker = job(0.0, 6, deadline_s=100.0, request_id="blocker")
    hopeless = job(1.0, 2, deadline_s=2.0, request_id="hopeless")  # expires while blocked
    feasible = job(1.0, 2, deadline_s=8.0, request_id="feasible")
    driver.submit(blocker, hopeless, feasible)
    run = driver.run()
    assert run.finish_s["feasible"] == 8.0 and run.finish_s["hopeless"] == 10.0
    assert scheduler.policy.num_expired == 1
    klass = scheduler.slo_stats().classes["0"]
    assert (klass.num_with_slo, klass.num_attained) == (3, 2)

    # Without demotion, the expired request goes first and makes the feasible one miss too.
    clock = VirtualClock()
    scheduler = make_policy_scheduler("edf:demote_expired=false", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    driver.submit(
        job(0.0, 6, deadline_s=100.0), job(1.0, 2, deadline_s=2.0), job(1.0, 2, deadline_s=8.0)
    )
    driver.run()
    assert scheduler.slo_stats().classes["0"].num_attained == 1


def test_slo_tracker_counts_per_class_attainment_waits_and_aborts():
    clock = VirtualClock()
    tracker = SLOTracker(clock, targets={1: SLO(ttft_s=1.0, e2e_s=10.0)})
    fast, slow, aborted = job(0.0, 2, priority=1), job(0.0, 2, priority=1), job(0.0, 2)
    for request in (fast, slow, aborted):
        tracker.on_arrival(request)
    clock.now_s = 0.5
    tracker.on_admitted(fast)
    clock.now_s = 0.8
    tracker.on_token(fast)
    clock.now_s = 4.0
    assert tracker.oldest_waiting_s() == 4.0
    tracker.on_admitted(slow)
    tracker.on_finished(fast, aborted=False)
    tracker.on_finished(aborted, aborted=True)
    clock.now_s = 5.0
    tracker.on_token(slow)  # ttft 5 s > 1 s
    tracker.on_finished(slow, aborted=False)
    stats = tracker.snapshot()
    assert stats.max_queue_wait_s == 4.0 and stats.num_waiting == 0
    assert stats.classes["1"].num_attained == 1 and stats.classes["1"].attainment == 0.5
    assert stats.classes["0"].num_aborted == 1
    metrics = {(name, labels.get("slo_class")): value for name, labels, value in stats.as_metrics()}
    assert metrics[("slo_attainment_ratio", "1")] == 0.5
    assert metrics[("scheduler_max_queue_wait_seconds", None)] == 4.0


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="PRIORITY:SECONDS"):
        make_policy("edf:class_deadlines_s=fast")
    with pytest.raises(ValueError, match="max_wait_s must be > 0"):
        make_policy("sjf:max_wait_s=0")
    with pytest.raises(ValueError, match="unknown scheduling policy 'lifo'"):
        make_policy("lifo")
    with pytest.raises(ValueError, match="not key=value"):
        make_policy("mlfq:num_levels")
    with pytest.raises(ValueError, match="SLO target ttft_s must be > 0"):
        SLO(ttft_s=0)
