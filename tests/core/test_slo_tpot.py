"""SLO attainment with a TPOT bound, driven through the scheduler: TPOT is first to last token
over the output tokens after the first, and a one-token output meets any TPOT bound."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from corral.core.request_times import RequestTimes
from corral.core.slo import ClassStats, SLOTracker
from corral.core.slo_target import SLO, parse_slo
from corral.request import Request
from tests.core.policy_driver import Driver, Run, VirtualClock, job, make_policy_scheduler


def run_with_targets(
    targets: dict[int, SLO], default_target: SLO, *requests: Request
) -> tuple[Run, Mapping[str, ClassStats]]:
    """Drive the requests through a scheduler whose tracker has these class targets."""
    clock = VirtualClock()
    scheduler = make_policy_scheduler("fcfs", clock, max_num_seqs=8)
    scheduler.slo = SLOTracker(lambda: scheduler.clock(), targets, default_target)
    driver = Driver(scheduler, clock)
    driver.submit(*requests)
    run = driver.run()
    return run, scheduler.slo_stats().classes


def test_a_tpot_bound_fails_and_another_passes():
    # One step per second, all running together: first token at t=1, the 5th at t=5,
    # so TPOT = (5 - 1) / 4 = 1.0 s for both 5-token requests.
    tight = job(0.0, 5, priority=1, request_id="tight")
    loose = job(0.0, 5, priority=2, request_id="loose")
    single = job(0.0, 1, priority=1, request_id="single")  # no TPOT: met
    run, classes = run_with_targets(
        {1: SLO(tpot_s=0.9), 2: SLO(tpot_s=1.0)}, SLO(), tight, loose, single
    )
    assert run.first_token_s == {"tight": 1.0, "loose": 1.0, "single": 1.0}
    assert run.finish_s == {"tight": 5.0, "loose": 5.0, "single": 1.0}
    assert (classes["1"].num_with_slo, classes["1"].num_attained) == (2, 1)
    assert (classes["2"].num_with_slo, classes["2"].num_attained) == (1, 1)


def test_tpot_combines_with_ttft_and_the_default_target():
    # TTFT 1 s meets 2 s, TPOT 1 s misses 0.5 s: not attained; the other class meets both.
    first = job(0.0, 3, priority=0, request_id="first")
    second = job(0.0, 3, priority=4, request_id="second")
    _, classes = run_with_targets(
        {4: SLO(ttft_s=2.0, tpot_s=2.0)}, SLO(ttft_s=2.0, tpot_s=0.5), first, second
    )
    assert (classes["0"].num_with_slo, classes["0"].num_attained) == (1, 0)
    assert (classes["4"].num_with_slo, classes["4"].num_attained) == (1, 1)


def test_request_times_derive_every_latency():
    times = RequestTimes(10.0)
    assert (times.ttft_s, times.tpot_s, times.e2e_s, times.queue_time_s) == (None,) * 4
    times.first_scheduled_s = 10.5
    times.add_tokens(11.0, 1)
    times.add_tokens(12.0, 2)
    assert times.ttft_s == 1.0 and times.e2e_s == 2.0 and times.tpot_s == 0.5
    assert times.finish(13.0) == 3.0 and times.e2e_s == 3.0
    assert times.queue_time_s == 0.5
    assert RequestTimes(5.0, first_scheduled_s=4.0).queue_time_s == 0.0


def test_slo_is_in_seconds_and_parses_milliseconds():
    slo = parse_slo("ttft_ms=200,tpot_ms=50,e2e_ms=10000")
    assert slo == SLO(ttft_s=0.2, tpot_s=0.05, e2e_s=10.0)
    assert slo.describe() == "ttft_ms<=200,tpot_ms<=50,e2e_ms<=10000"
    assert SLO().describe() == "none" and SLO().is_empty
    assert slo.is_met(0.2, 0.05, 10.0) and slo.is_met(0.1, None, 1.0)
    assert not slo.is_met(0.21, None, 1.0)
    assert not slo.is_met(0.1, 0.051, 1.0)
    assert not slo.is_met(0.1, 0.01, 10.5)
    with pytest.raises(ValueError, match="SLO target tpot_s must be > 0 s"):
        SLO(tpot_s=-1.0)
    with pytest.raises(ValueError, match="SLO e2e_ms must be > 0 ms, got 0.0"):
        parse_slo("e2e_ms=0")
