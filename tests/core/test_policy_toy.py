"""The survey's overview example: two requests of 10 and 2 output tokens arrive together and
the instance generates one token per second for one request at a time. FCFS serves the long one
first, SJF the short one; each request's rate is its tokens over its time in the system."""

from __future__ import annotations

import pytest

from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler


def run_toy(policy: str) -> dict[str, float]:
    clock = VirtualClock()
    scheduler = make_policy_scheduler(policy, clock, max_num_seqs=1)
    driver = Driver(scheduler, clock, step_time_s=1.0)
    driver.submit(
        job(0.0, 10, predicted=10, request_id="long"), job(0.0, 2, predicted=2, request_id="short")
    )
    run = driver.run()
    return run.finish_s


@pytest.mark.parametrize(
    "policy, finish_s, rates",
    [
        # FCFS: long runs 0-10 s, short waits and runs 10-12 s.
        ("fcfs", {"long": 10.0, "short": 12.0}, {"long": 1.0, "short": 2 / 12}),
        # SJF: short runs 0-2 s, long runs 2-12 s.
        ("sjf", {"long": 12.0, "short": 2.0}, {"long": 10 / 12, "short": 1.0}),
        # SRPT behaves as SJF here: nothing arrives later.
        ("srpt", {"long": 12.0, "short": 2.0}, {"long": 10 / 12, "short": 1.0}),
    ],
)
def test_fcfs_and_sjf_give_the_exact_per_request_rates(policy, finish_s, rates):
    finished = run_toy(policy)
    assert finished == finish_s
    tokens = {"long": 10, "short": 2}
    assert {rid: tokens[rid] / finished[rid] for rid in tokens} == pytest.approx(rates, abs=1e-12)
    mean_latency = sum(finished.values()) / 2
    assert mean_latency == (11.0 if policy == "fcfs" else 7.0)


def test_slo_tracker_sees_the_same_latencies():
    clock = VirtualClock()
    scheduler = make_policy_scheduler("sjf", clock, max_num_seqs=1)
    driver = Driver(scheduler, clock)
    driver.submit(job(0.0, 10, predicted=10), job(0.0, 2, predicted=2))
    driver.run()
    stats = scheduler.slo_stats()
    klass = stats.classes["0"]
    assert klass.num_finished == 2
    assert klass.sum_e2e_s == pytest.approx(14.0)
    assert klass.max_e2e_s == pytest.approx(12.0)
    # The long job waited 2 s; the first tokens came at 1 s and 3 s.
    assert stats.max_queue_wait_s == pytest.approx(2.0)
    assert klass.sum_ttft_s == pytest.approx(4.0)
