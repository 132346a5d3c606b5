"""Session KV pins (corral/core/session_pins.py): a finished turn's cached blocks stay on the
device for its session's next turn, survive pressure that evicts unpinned cache, expire after the
TTL, and give way before any running request would be preempted."""

from __future__ import annotations

import pytest

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request
from tests.core.policy_driver import VirtualClock

BLOCK = 4


def _scheduler(num_blocks: int, ttl_s: float = 10.0, **config) -> tuple[Scheduler, VirtualClock]:
    clock = VirtualClock()
    scheduler = Scheduler(
        SchedulerConfig(session_kv_ttl_s=ttl_s, **config),
        KVCacheManager(num_blocks, BLOCK),
        4096,
        clock=clock,
    )
    return scheduler, clock


def _turn(prompt: list[int], max_tokens: int, session: str | None, request_id: str):
    request = make_request(prompt, max_tokens=max_tokens, request_id=request_id)
    request.session_id = session
    return request


def _run(scheduler: Scheduler, *requests) -> dict[str, list[int]]:
    for request in requests:
        scheduler.add_request(request)
    return FakeExecutor(scheduler).run()


def _cached(scheduler: Scheduler, request) -> int:
    """How many of request's full prompt blocks the device prefix cache holds."""
    kv = scheduler.kv
    hashes = kv.request_block_hashes(request, request.num_prompt_tokens // BLOCK)
    return sum(kv.pool.lookup(h) is not None for h in hashes)


def test_a_pin_survives_pressure_that_evicts_unpinned_cache_and_serves_the_next_turn():
    scheduler, clock = _scheduler(num_blocks=16)
    # 24 + 5 tokens, 28 computed: 7 full blocks (the last sampled token is never computed).
    agent = _turn(list(range(1, 25)), 5, "s1", "agent-0")
    plain = _turn(list(range(100, 124)), 5, None, "plain")
    _run(scheduler, agent, plain)
    pins = scheduler.pins
    assert pins.stats.num_pinned == 1 and pins.stats.num_active == 1
    assert (
        pins.stats.num_pinned_blocks == 7 == scheduler.kv.num_blocks - scheduler.kv.num_free_blocks
    )
    clock.now_s = 5.0  # a tool call later; a newcomer needs 9 blocks: the free and cold ones
    newcomer = _turn(list(range(200, 236)), 1, None, "newcomer")
    _run(scheduler, newcomer)
    assert _cached(scheduler, plain) == 0  # cold cache evicted
    assert _cached(scheduler, agent) == 6  # the paused conversation's prompt blocks stayed
    assert pins.stats.num_reclaimed == 0 and scheduler.num_preemptions == 0
    # The next turn: the history (prompt + answer) then the tool's result.
    history = agent.all_token_ids + [300, 301, 302, 303]
    follow_up = _turn(history, 2, "s1", "agent-1")
    _run(scheduler, follow_up)
    assert follow_up.num_cached_tokens == 28  # 7 full blocks: the whole first turn computed
    assert pins.stats.num_hits == 1
    assert pins.stats.num_active == 1  # the follow-up's own blocks are pinned now
    scheduler.kv.check_integrity()


def test_a_pin_expires_after_the_ttl():
    scheduler, clock = _scheduler(num_blocks=16, ttl_s=3.0)
    agent = _turn(list(range(1, 25)), 4, "s1", "agent-0")
    _run(scheduler, agent)
    clock.now_s = 2.9
    scheduler.schedule()
    assert scheduler.pins.stats.num_active == 1
    clock.now_s = 3.1
    scheduler.schedule()
    stats = scheduler.pins.stats
    assert (stats.num_active, stats.num_expired, stats.num_pinned_blocks) == (0, 1, 0)
    assert scheduler.kv.num_free_blocks == 16  # cached, evictable again
    assert _cached(scheduler, agent) == 6


def test_pins_give_way_before_anyone_is_preempted():
    scheduler, clock = _scheduler(num_blocks=16)
    _run(scheduler, _turn(list(range(1, 25)), 5, "s1", "a"))
    _run(scheduler, _turn(list(range(50, 74)), 5, "s2", "b"))
    assert scheduler.pins.stats.num_pinned_blocks == 14
    clock.now_s = 1.0
    big = _turn(list(range(400, 448)), 8, None, "big")  # 56 tokens: 14 blocks
    outputs = _run(scheduler, big)
    assert len(outputs["big"]) == 8
    assert scheduler.num_preemptions == 0
    assert scheduler.pins.stats.num_reclaimed == 2 and scheduler.pins.stats.num_active == 0
    scheduler.kv.check_integrity()


def test_the_pin_that_wastes_most_goes_first():
    scheduler, clock = _scheduler(num_blocks=24, ttl_s=10.0)
    _run(scheduler, _turn(list(range(1, 25)), 5, "old", "a"))  # 7 blocks, pinned at t=0
    clock.now_s = 6.0
    _run(scheduler, _turn(list(range(50, 62)), 5, "new", "b"))  # 4 blocks, pinned at t=6
    # old: 7 blocks x 4 s left = 28; new: 4 blocks x 10 s = 40: new goes first.
    assert scheduler.pins.reclaim()
    assert scheduler.pins._pins.keys() == {"old"}


def test_an_aborted_turn_pins_nothing_and_a_newer_turn_replaces_the_pin():
    scheduler, _ = _scheduler(num_blocks=32)
    aborted = _turn(list(range(1, 25)), 4, "s1", "x")
    scheduler.add_request(aborted)
    FakeExecutor(scheduler).step()
    scheduler.finish_requests(["x"])
    assert scheduler.pins.stats.num_pinned == 0
    first = _turn(list(range(1, 25)), 4, "s1", "t0")
    _run(scheduler, first)
    second = _turn(first.all_token_ids + [90, 91, 92, 93], 4, "s1", "t1")
    _run(scheduler, second)
    stats = scheduler.pins.stats
    assert (stats.num_pinned, stats.num_active, stats.num_hits) == (2, 1, 1)
    assert stats.num_pinned_blocks == (second.num_tokens - 1) // BLOCK  # its computed blocks
    scheduler.kv.check_integrity()


def test_the_ttl_must_be_finite_and_not_negative():
    for ttl in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="session_kv_ttl_s"):
            SchedulerConfig(session_kv_ttl_s=ttl)


def test_an_overdue_pin_goes_before_one_inside_the_learnt_pause():
    scheduler, clock = _scheduler(num_blocks=64, ttl_s=100.0)
    _run(scheduler, _turn(list(range(100, 108)), 5, "gone", "g0"))  # a last turn, at t=0
    first = _turn(list(range(1, 25)), 5, "a", "a0")
    _run(scheduler, first)
    clock.now_s = 1.0  # its next turn comes back after 1 s: the expected pause
    _run(scheduler, _turn(first.all_token_ids + [70, 71, 72, 73], 3, "a", "a1"))
    assert scheduler.pins.expected_pause_s == pytest.approx(1.0)
    clock.now_s = 2.4
    _run(scheduler, _turn(list(range(200, 224)), 5, "fresh", "f0"))
    clock.now_s = 2.5
    # "gone" paused 2.5 s (> 2 x 1 s): overdue, released first though the others are larger.
    assert scheduler.pins.reclaim()
    assert "gone" not in scheduler.pins._pins and {"a", "fresh"} <= scheduler.pins._pins.keys()
    # Then the larger waste of the two inside their pause: "fresh" (7 blocks x 0.9 s left)
    # before "a" (8 blocks x 0 s left).
    assert scheduler.pins.reclaim() and scheduler.pins._pins.keys() == {"a"}


def test_an_announced_pause_decides_for_its_pin():
    scheduler, clock = _scheduler(num_blocks=64, ttl_s=10.0)
    long_pause = _turn(list(range(1, 25)), 5, "slow-tool", "s0")
    long_pause.session_pause_s = 60.0  # back after the TTL: not worth pinning
    _run(scheduler, long_pause)
    assert scheduler.pins.stats.num_pinned == 0
    quick = _turn(list(range(100, 124)), 5, "quick-tool", "q0")
    quick.session_pause_s = 0.5
    _run(scheduler, quick)
    unannounced = _turn(list(range(200, 224)), 5, "plain", "p0")
    _run(scheduler, unannounced)
    clock.now_s = 2.0  # quick-tool said 0.5 s: 2 s later it is overdue, plain is not
    assert scheduler.pins.reclaim()
    assert scheduler.pins._pins.keys() == {"plain"}


def test_a_pin_whose_next_turn_waits_goes_last_and_outlives_the_ttl():
    scheduler, clock = _scheduler(num_blocks=64, ttl_s=3.0, max_num_seqs=1)
    first = _turn(list(range(1, 25)), 5, "a", "a0")
    _run(scheduler, first)
    _run(scheduler, _turn(list(range(100, 124)), 5, "b", "b0"))
    blocker = _turn(list(range(300, 308)), 40, None, "blocker")  # holds the only seat
    scheduler.add_request(blocker)
    FakeExecutor(scheduler).step()
    clock.now_s = 1.0
    follow_up = _turn(first.all_token_ids + [70, 71], 2, "a", "a1")
    scheduler.add_request(follow_up)  # queued behind the blocker: "a" is claimed
    assert scheduler.pins.reclaim()
    assert scheduler.pins._pins.keys() == {"a"}  # "b" went first though "a" is older
    clock.now_s = 10.0  # past the TTL while the follow-up still waits
    scheduler.schedule()
    assert "a" in scheduler.pins._pins and scheduler.pins.stats.num_expired == 0
