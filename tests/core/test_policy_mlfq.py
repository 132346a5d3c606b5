"""FastServe-style MLFQ: skip-join by prefill cost, demotion after each level's quantum of
generated tokens, token-level preemption by higher levels, promotion of starving requests."""

from __future__ import annotations

from corral.core.policies import make_policy
from corral.core.policies.mlfq import MLFQPolicy
from tests.core.policy_driver import Driver, VirtualClock, job, make_policy_scheduler

# quanta [2, 4, inf] generated tokens; a prompt costs 1 token per 4 prompt tokens.
SPEC = "mlfq:num_levels=3,base_quantum=2,quantum_ratio=2,prefill_tokens_per_token=4"


def test_skip_join_places_long_prompts_below_the_top_level():
    policy = make_policy(SPEC)
    assert isinstance(policy, MLFQPolicy)
    assert policy.quanta[:2] == [2, 4]
    assert policy.join_level(job(0, 5, num_prompt_tokens=8)) == 0  # cost 2 <= 2
    assert policy.join_level(job(0, 5, num_prompt_tokens=9)) == 1  # cost 2.25 > 2
    assert policy.join_level(job(0, 5, num_prompt_tokens=16)) == 1  # cost 4 <= 4
    assert policy.join_level(job(0, 5, num_prompt_tokens=400)) == 2  # the last level takes all


def test_demotion_preemption_and_promotion():
    clock = VirtualClock()
    scheduler = make_policy_scheduler(
        SPEC + ",promote_after_s=5", clock, max_num_seqs=1, num_blocks=64
    )
    policy = scheduler.policy
    assert isinstance(policy, MLFQPolicy)
    driver = Driver(scheduler, clock)
    first = job(0.0, 20, request_id="first")
    driver.submit(first)
    levels = []
    for _ in range(6):
        driver.step()
        levels.append(policy.level_of(first))
    # 2 tokens at level 0, 4 at level 1, then the last level.
    assert levels == [0, 1, 1, 1, 1, 2]
    assert policy.num_demotions == 2

    second = job(6.0, 10, request_id="second")
    driver.submit(second)
    driver.step()  # t=6: the new level-0 request preempts the level-2 one (one seat)
    assert first.num_preemptions == 1 and scheduler.num_waiting == 1
    assert driver.run_info.sampled_per_step[-1] == ["second"]
    assert policy.level_of(first) == 2 and policy.level_of(second) == 0

    # first was queued at t=6; at t=11 it has waited 5 s and is promoted to level 0, where it
    # preempts second (demoted to level 1 meanwhile).
    while policy.num_promotions == 0:
        driver.step()
    assert clock.now_s == 12.0  # promoted by the schedule() at t=11
    assert policy.level_of(first) == 0 and policy.level_of(second) >= 1
    assert second.num_preemptions == 1
    run = driver.run()
    assert first.num_output_tokens == 20 and second.num_output_tokens == 10
    assert set(run.finish_s) == {"first", "second"}


def test_higher_levels_get_the_budget_first():
    policy = make_policy(SPEC)
    assert isinstance(policy, MLFQPolicy)
    old, mid, new = job(0.0, 9, request_id="old"), job(1.0, 9), job(2.0, 9, request_id="new")
    requests = {r.request_id: r for r in (old, mid, new)}
    for request in requests.values():
        policy.add_waiting(request)
        policy.pop_waiting()
    for _ in range(2):  # old and mid sample 2 tokens each: demoted to level 1
        policy.on_step({old.request_id: 1, mid.request_id: 1}, requests)
        for request in (old, mid):
            request.num_computed_tokens += 1
            request.append_output_token(7)
    assert [policy.level_of(r) for r in (old, mid, new)] == [1, 1, 0]
    assert list(policy.order_running([old, mid, new], 3.0)) == [new, old, mid]
    assert policy.select_victim([old, mid, new]) is mid
    assert policy.victims_for(new, [old, mid]) == [mid]
    assert policy.victims_for(old, [mid]) == []  # same level: no preemption
