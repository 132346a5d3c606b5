"""Aging and the shared starvation bound: a long job finishes under a steady stream of short
ones (and without the bound it would not)."""

from __future__ import annotations

import pytest

from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler

NUM_SHORT = 100


def run_stream(policy: str) -> tuple[float, Driver]:
    """One seat; 2-token jobs every 2 s keep the queue busy; a 20-token job arrives at 0.5 s."""
    clock = VirtualClock()
    scheduler = make_policy_scheduler(policy, clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    shorts = [job(2.0 * i, 2, predicted=2) for i in range(NUM_SHORT)]
    long = job(0.5, 20, predicted=20, request_id="long")
    driver.submit(*shorts, long)
    run = driver.run()
    return run.finish_s["long"], driver


def test_without_a_bound_the_long_job_starves_until_the_stream_ends():
    finish_s, _ = run_stream("sjf:max_wait_s=none")
    assert finish_s >= 2.0 * NUM_SHORT  # it only ran once no short job was left


@pytest.mark.parametrize("policy", ["sjf:max_wait_s=10", "srpt:max_wait_s=10"])
def test_the_starvation_bound_admits_the_long_job(policy):
    finish_s, driver = run_stream(policy)
    # Admitted at the first step boundary after waiting 10 s (a short job may be finishing),
    # then it runs its 20 tokens without being preempted.
    assert finish_s <= 0.5 + 10 + 2 + 20
    assert driver.scheduler.policy.num_starvation_admissions >= 1
    # Every request, long or short, waits at most the bound plus the longest job ahead of it.
    assert driver.scheduler.slo_stats().max_queue_wait_s <= 10 + 20 + 2


def test_aging_alone_also_lets_the_long_job_through():
    # key = predicted + rate * arrival: with 2 tokens/s the long job (20 + 1) beats every
    # short job that arrived after 9.5 s.
    finish_s, _ = run_stream("sjf:max_wait_s=none,aging_tokens_per_s=2")
    assert finish_s <= 12 + 20 + 2


def test_overdue_requests_are_not_preempted_by_srpt():
    clock = VirtualClock()
    scheduler = make_policy_scheduler("srpt:max_wait_s=3", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    long = job(0.0, 30, predicted=30, request_id="long")
    driver.submit(long, job(0.0, 1, predicted=1), job(10.0, 2, predicted=2, request_id="late"))
    run = driver.run()
    # The late short job (15x shorter) would preempt a fresh long job; this one is overdue.
    assert long.num_preemptions == 0
    assert run.finish_s["late"] > run.finish_s["long"]
