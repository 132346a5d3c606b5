"""The adaptive number of draft tokens (torch-free): it follows measured acceptance and step
and proposal costs, and gives none where verification costs more than it yields."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from corral.spec.controller import (
    MIN_PROPOSE_OBSERVATIONS,
    MIN_START_ROUNDS,
    PROBE_INTERVAL_STEPS,
    PROBE_TIME_FRACTION,
    Candidate,
    SpecController,
    SpecPlan,
)
from corral.spec.plan_hold import IDLE_HOLD_STEPS, PLAN_HOLD_STEPS
from corral.spec.propose_cost import ProposeCostEstimate
from corral.spec.step_cost import StepCostEstimate


def feed_costs(controller: SpecController, fixed_s: float, per_token_s: float) -> None:
    for num_tokens in (1, 2, 5, 8, 16, 32, 64, 100, 160, 3, 40):
        controller.observe_step(num_tokens, 0, fixed_s + per_token_s * num_tokens, 0.0, 0)


def feed_acceptance(controller: SpecController, request_id: str, rate_in_10: int) -> None:
    for round_index in range(50):
        accepted = 1 if round_index % 10 < rate_in_10 else 0
        controller.record(request_id, 1, accepted)


def candidates(names, num_held: int = 4, max_k: int = 4) -> dict[str, Candidate]:
    return {name: Candidate(num_held, max_k) for name in names}


def test_step_cost_fit_recovers_a_line() -> None:
    estimate = StepCostEstimate()
    for num_tokens in range(1, 200, 7):
        estimate.observe(num_tokens, 0, 0.002 + 0.0001 * num_tokens)
    fixed, slope, _ = estimate.coefficients()
    assert abs(fixed - 0.002) < 2e-4
    assert abs(slope - 0.0001) < 1e-5


def test_step_cost_without_spread_uses_the_prior() -> None:
    estimate = StepCostEstimate(prior_per_token_fraction=1 / 50)
    for _ in range(20):
        estimate.observe(10, 0, 0.012)
    fixed, slope, _ = estimate.coefficients()
    # t = fixed * (1 + n / 50) at n = 10, t = 0.012  =>  fixed = 0.01, slope = 0.0002.
    assert abs(slope - 0.0002) < 2e-5
    assert abs(fixed + 10 * slope - 0.012) < 1e-9


def test_propose_cost_separates_passes_from_tokens() -> None:
    estimate = ProposeCostEstimate()
    for passes, tokens in [(1, 1), (4, 4), (1, 32), (4, 128), (2, 16), (3, 3), (2, 64)] * 3:
        estimate.observe(passes, tokens, 0.0005 * passes + 0.00002 * tokens)
    pass_s, token_s, _ = estimate.coefficients()
    assert abs(pass_s - 0.0005) < 5e-5
    assert abs(token_s - 0.00002) < 5e-6


def test_step_cost_separates_row_tokens_from_prefill_tokens() -> None:
    """Verification tokens run as decode rows: their cost is not a prefill token's."""
    estimate = StepCostEstimate()
    for rows, prefill in [(1, 0), (5, 0), (1, 100), (3, 300), (32, 0), (2, 50), (16, 0)] * 3:
        estimate.observe(rows, prefill, 0.001 + 0.00005 * rows + 0.0006 * prefill)
    fixed, per_row, per_prefill = estimate.coefficients()
    assert abs(fixed - 0.001) < 1e-4
    assert abs(per_row - 0.00005) < 1e-5
    assert abs(per_prefill - 0.0006) < 1e-5


def test_fixed_rule_gives_k_within_budget() -> None:
    controller = SpecController(4, "fixed")
    plan = controller.plan(
        {"a": Candidate(4, 4), "b": Candidate(4, 2), "c": Candidate(4, 4)}, 3, 0, budget=7
    )
    assert plan.verify == {"a": 4, "b": 2, "c": 1}
    assert plan.propose == {"a": 4, "b": 2, "c": 4}


def test_lone_request_on_overhead_bound_steps_gets_k() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00002)
    feed_acceptance(controller, "a", 8)
    plan = controller.plan(candidates(["a"]), 1, 0, budget=100)
    assert plan.verify == {"a": 4} and plan.propose == {"a": 4}


def test_a_plan_that_drafts_is_held_for_its_batch_then_made_again() -> None:
    """The proposals of a plan stand PLAN_HOLD_STEPS more steps for the same batch (within each
    candidate's limits now), then the rule runs again; a new batch is planned at once."""
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00002)
    feed_acceptance(controller, "a", 8)
    assert controller.plan(candidates(["a"]), 1, 0, budget=100) == ({"a": 4}, {"a": 4})
    for _ in range(5000):  # acceptance collapses: the rule would now grant nothing
        controller.record("a", 4, 0)
    for step in range(PLAN_HOLD_STEPS):
        held = controller.plan({"a": Candidate(2 + step % 2, 3)}, 1, 0, budget=100)
        assert held == ({"a": 2 + step % 2}, {"a": 3})
    assert controller.plan(candidates(["a"]), 1, 0, budget=100) == ({}, {})
    fresh = SpecController(4)
    feed_costs(fresh, fixed_s=0.002, per_token_s=0.00002)
    feed_acceptance(fresh, "a", 8)
    assert fresh.plan(candidates(["a"]), 1, 0, budget=100).propose == {"a": 4}
    for _ in range(5000):
        fresh.record("a", 4, 0)
    assert fresh.plan(candidates(["a", "b"]), 2, 0, budget=100).propose == {}


def test_what_is_left_of_a_batch_keeps_its_plan() -> None:
    """Requests finishing one by one (at 32 each step's batch was a smaller one) keep the held
    proposals for those left; a request new to the batch has it planned in full."""
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00002)
    for name in "abc":
        feed_acceptance(controller, name, 8)
    assert controller.plan(candidates(["a", "b", "c"]), 3, 0, budget=100).propose == dict.fromkeys(
        "abc", 4
    )
    for _ in range(5000):  # the rule would now grant nothing
        for name in "abcd":
            controller.record(name, 4, 0)
    assert controller.plan(candidates(["a", "c"]), 2, 0, budget=100) == (
        {"a": 4, "c": 4},
        {"a": 4, "c": 4},
    )
    assert controller.plan(candidates(["c", "d"]), 2, 0, budget=100) == ({}, {})


def test_large_compute_bound_batch_gets_none() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    names = [f"r{i}" for i in range(32)]
    for request_id in names:
        feed_acceptance(controller, request_id, 6)
    assert controller.plan(candidates(names), 32, 0, budget=1000) == ({}, {})


def test_a_prefill_heavy_step_does_not_make_proposals_look_cheap() -> None:
    """Proposals are verified next step: a step that is mostly prompt tokens (low tokens per
    second) must not grant a large batch drafts that its decode steps cannot pay for."""
    controller = SpecController(4)
    for rows, prefill in [(1, 0), (8, 0), (32, 0), (4, 500), (16, 2000), (2, 100), (24, 0)] * 3:
        controller.observe_step(rows, prefill, 0.001 + 0.0002 * rows + 0.0002 * prefill, 0.0, 0)
    names = [f"r{i}" for i in range(29)]
    for request_id in names:
        feed_acceptance(controller, request_id, 6)
    plan = controller.plan(candidates(names, num_held=0), 29, 2000, budget=4000)
    assert plan.propose == {}
    # The same batch alone in a decode step gets none either; one request alone gets drafts.
    assert controller.plan(candidates(names, num_held=0), 29, 0, budget=4000).propose == {}
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00002)
    assert controller.plan(candidates(["r0"], num_held=0), 1, 300, budget=4000).propose


def test_held_drafts_are_verified_when_proposing_more_would_not_pay() -> None:
    """A proposal already paid for costs only its verification."""
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00005)
    for _ in range(20):
        controller.propose_cost.observe(1, 1, 0.004)  # proposing is dear: 4 ms a token
    feed_acceptance(controller, "a", 7)
    plan = controller.plan(candidates(["a"], num_held=3), 1, 0, budget=100)
    assert plan.verify == {"a": 3}
    assert plan.propose == {}


def test_better_acceptance_gets_more_tokens() -> None:
    controller = SpecController(6)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.0001)
    feed_acceptance(controller, "good", 9)
    feed_acceptance(controller, "poor", 2)
    plan = controller.plan(candidates(["good", "poor"], 6, 6), 2, 0, budget=100)
    assert plan.propose.get("good", 0) > plan.propose.get("poor", 0)


def test_a_draft_pass_is_shared_by_the_batch() -> None:
    """A draft model costs per pass, whatever the batch: 1.5 ms a pass is worth paying for 32
    requests on 10 ms steps; the same 1.5 ms charged per drafted token is not."""

    def num_planned(pass_s: float, token_s: float) -> int:
        controller = SpecController(4)
        feed_costs(controller, fixed_s=0.010, per_token_s=0.00001)
        for passes, tokens in [(1, 1), (1, 16), (2, 2), (2, 32), (4, 8), (3, 30)] * 4:
            controller.propose_cost.observe(passes, tokens, pass_s * passes + token_s * tokens)
        names = [f"r{i}" for i in range(32)]
        for name in names:
            feed_acceptance(controller, name, 8)
        return len(controller.plan(candidates(names, 0), 32, 0, budget=1000).propose)

    assert num_planned(pass_s=0.0015, token_s=0.000001) == 32
    assert num_planned(pass_s=0.0, token_s=0.0015) == 0


def test_plan_respects_each_requests_cap_and_budget() -> None:
    controller = SpecController(8)
    feed_costs(controller, fixed_s=0.01, per_token_s=0.0)
    feed_acceptance(controller, "a", 10)
    feed_acceptance(controller, "b", 10)
    plan = controller.plan({"a": Candidate(8, 2), "b": Candidate(8, 8)}, 2, 0, budget=5)
    assert plan.verify["a"] <= 2 and sum(plan.verify.values()) == 5


@pytest.mark.parametrize(
    "pass_based, probes",
    [
        (False, {"a": 1, "b": 1}),
        # A proposer run in passes (a draft model) probes as deep as the budget holds, so that
        # deep drafts' acceptance and cost are measured: the 1.8 ms budget (1% of 64 steps of
        # 2.8 ms) holds one request's four drafts (0.2 ms each to verify, 0.03 to propose,
        # with the call and four passes) but not a second's.
        (True, {"a": 4}),
    ],
)
def test_probes_propose_then_verify(pass_based: bool, probes: dict[str, int]) -> None:
    controller = SpecController(4, pass_based=pass_based)
    if pass_based:  # a timed catch-up (none here) leaves the fit's catch-up price aside
        for _ in range(MIN_PROPOSE_OBSERVATIONS):
            controller.observe_step(1, 0, 0.001, 0.0001, 1, catchup_time_s=0.0)
    feed_costs(controller, fixed_s=0.0024, per_token_s=0.0002)
    for request_id in ("a", "b"):
        feed_acceptance(controller, request_id, 0)
    plans = [
        controller.plan(candidates(["a", "b"], 0), 2, 0, budget=100)
        for _ in range(PROBE_INTERVAL_STEPS)
    ]
    assert all(plan == ({}, {}) for plan in plans[:-1])
    assert plans[-1].propose == probes
    # Next step they hold their drafts: all are verified although they would not pay.
    held = max(probes.values())
    plan = controller.plan(candidates(["a", "b"], held), 2, 0, budget=100)
    assert plan.verify == probes


def test_acceptance_shrinks_toward_the_proposers_rate() -> None:
    controller = SpecController(4)
    for _ in range(100):
        controller.record("old", 4, 4)
    # A new request starts near the proposer-wide estimate, not the prior.
    assert controller.acceptance("new") > 0.9
    controller.record("new", 4, 0)
    assert controller.acceptance("new") < controller.acceptance("old")


def test_depth_yields_follow_the_measured_profile() -> None:
    """A proposer whose later drafts stand more often than its first (conditional acceptance
    0.5 then 0.9): the yield at depth 3 is near 0.5 * 0.9 * 0.9, not 0.5^3."""
    controller = SpecController(4)
    for index in range(400):
        if index % 2:
            controller.record("r", 3, 0)
        else:
            controller.record("r", 3, 3 if index % 20 else 1)
    yields = controller.depth_yields("r", 3)
    assert yields[0] == pytest.approx(0.5, abs=0.05)
    assert yields[2] == pytest.approx(0.45, abs=0.06)
    assert yields[2] > 2 * 0.5**3
    assert yields == sorted(yields, reverse=True)


def test_fruitless_probes_back_off() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    names = [f"r{i}" for i in range(32)]
    for name in names:
        feed_acceptance(controller, name, 0)
    probe_steps = []
    for step in range(64 + 128 + 256 + 5):
        held = 1 if probe_steps and probe_steps[-1] == step - 1 else 0
        plan = controller.plan(candidates(names, held), 32, 0, budget=1000)
        if plan.propose:
            probe_steps.append(step)
    assert probe_steps[:3] == [63, 63 + 128, 63 + 128 + 256]


def test_catching_up_on_a_long_prompt_must_pay_for_itself() -> None:
    """A draft model first prefills what it has not seen: starting a request 300 tokens behind
    with 10 tokens to go does not pay where resuming one in sync does."""
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.0001)
    for passes, tokens, catchup in [(1, 1, 0), (2, 4, 0), (1, 2, 200), (3, 3, 0), (1, 1, 400)] * 4:
        controller.propose_cost.observe(
            passes, tokens, 0.0002 * passes + 0.00002 * tokens + 0.0001 * catchup, catchup
        )
    feed_acceptance(controller, "synced", 8)
    feed_acceptance(controller, "behind", 8)
    plan = controller.plan(
        {"synced": Candidate(0, 4, 1, 10), "behind": Candidate(0, 4, 300, 10)}, 2, 0, budget=100
    )
    assert "synced" in plan.propose
    assert "behind" not in plan.propose
    # With a long way to go the same catch-up is worth it (a request new to the held batch:
    # what is left of a batch keeps its plan a few steps).
    feed_acceptance(controller, "far", 8)
    plan = controller.plan({"far": Candidate(0, 4, 300, 400)}, 1, 0, budget=100)
    assert "far" in plan.propose


def test_the_shortcut_when_nothing_pays_plans_exactly_as_the_full_rule() -> None:
    import random

    rng = random.Random(11)
    num_shortcuts = 0
    for _ in range(300):
        pair = [SpecController(4), SpecController(4)]
        pair[1].use_bound = False
        fixed_s, per_token_s = rng.uniform(1e-4, 5e-3), rng.uniform(1e-6, 1e-3)
        pass_s, token_s = rng.choice([0.0, rng.uniform(1e-5, 2e-3)]), rng.uniform(0, 2e-4)
        names = [f"r{i}" for i in range(rng.randint(1, 40))]
        rounds = [(rng.choice(names), rng.randint(1, 4)) for _ in range(rng.randint(0, 60))]
        for controller in pair:
            feed_costs(controller, fixed_s, per_token_s)
            for _ in range(3):
                controller.propose_cost.observe(2, 4, 2 * pass_s + 4 * token_s, 0)
                controller.propose_cost.observe(1, 1, pass_s + token_s, 0)
            for request_id, num_drafts in rounds:
                controller.record(
                    request_id,
                    num_drafts,
                    random.Random(request_id).randint(0, 4) % (num_drafts + 1),
                )
        steps = []
        for _ in range(70):  # enough steps for a probe
            held = rng.random() < 0.1
            step = {
                name: Candidate(
                    rng.randint(1, 4) if held else 0, rng.randint(0, 4), rng.randint(0, 300)
                )
                for name in rng.sample(names, rng.randint(1, len(names)))
            }
            steps.append((step, rng.randint(1, 64), rng.choice([0, 0, 500]), rng.randint(1, 512)))
        for step, num_rows, num_prefill, budget in steps:
            plans = [c.plan(step, num_rows, num_prefill, budget) for c in pair]
            assert plans[0] == plans[1]
            num_shortcuts += not plans[0].verify and not plans[0].propose
    assert num_shortcuts > 1000  # the shortcut's case is common here, so it was exercised


def test_a_probe_that_would_cost_a_long_catch_up_is_skipped() -> None:
    """A draft model's probe of a request it has not followed prefills the whole sequence: the
    probes are rationed to PROBE_TIME_FRACTION of the time since the last one."""
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.0019, per_token_s=0.0003)
    for _ in range(5):  # per pass 0.5 ms, per token 0.05 ms, per catch-up token 0.04 ms
        for passes, tokens, catchup in ((1, 1, 0), (2, 2, 0), (1, 1, 100), (3, 3, 40)):
            controller.propose_cost.observe(
                passes, tokens, 5e-4 * passes + 5e-5 * tokens + 4e-5 * catchup, catchup
            )
    feed_acceptance(controller, "far", 0)
    feed_acceptance(controller, "near", 0)
    budget_s = PROBE_TIME_FRACTION * PROBE_INTERVAL_STEPS * (0.0019 + 0.0003)  # about 1.4 ms
    assert 4e-5 * 150 > budget_s > 5e-4 + 3.5e-4 + 4e-5 * 5
    plans = [
        controller.plan({"far": Candidate(0, 4, 150)}, 1, 0, budget=100)
        for _ in range(PROBE_INTERVAL_STEPS)
    ]
    assert all(plan == ({}, {}) for plan in plans)  # the one probe due was too dear
    plans = [
        controller.plan({"near": Candidate(0, 4, 5)}, 1, 0, budget=100)
        for _ in range(2 * PROBE_INTERVAL_STEPS)
    ]
    assert plans[-1].propose == {"near": 1} and all(not p.propose for p in plans[:-1])


def test_an_empty_plan_is_held_and_probes_keep_their_schedule() -> None:
    """hold_idle keeps an empty plan IDLE_HOLD_STEPS steps, then the rule runs again; the
    probes fall on the same steps as when the rule runs every step; a plan that grants
    anything ends the hold."""
    names = [f"r{i}" for i in range(8)]

    def probe_steps(hold: bool) -> tuple[list[int], int]:
        controller = SpecController(4)
        feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
        for name in names:
            feed_acceptance(controller, name, 0)
        steps, num_rule_runs = [], 0
        for step in range(64 + 128 + 5):
            held = 1 if steps and steps[-1] == step - 1 else 0
            if hold and held == 0 and controller.hold_idle():
                continue
            num_rule_runs += 1
            if controller.plan(candidates(names, held), 8, 0, budget=1000).propose:
                steps.append(step)
        return steps, num_rule_runs

    held_steps, held_runs = probe_steps(hold=True)
    full_steps, full_runs = probe_steps(hold=False)
    assert held_steps == full_steps == [63, 63 + 128]
    assert held_runs < full_runs / IDLE_HOLD_STEPS * 1.5

    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    assert controller.hold_idle() is False  # nothing planned yet
    feed_acceptance(controller, "a", 10)
    assert controller.plan(candidates(["a"], 0), 1, 0, budget=100).propose  # pays: no hold
    assert controller.hold_idle() is False


def test_the_scheduler_plans_a_new_batch_in_full() -> None:
    """SpecDecodeScheduling holds an empty plan only for the batch it planned: a request that
    joins is a candidate at once."""
    from corral.config import SpeculativeConfig
    from corral.core.kv_cache import KVCacheManager
    from corral.core.spec_decode import SpecDecodeScheduling

    spec = SpecDecodeScheduling(
        SpeculativeConfig(method="ngram", num_speculative_tokens=4), KVCacheManager(64, 16),
        max_model_len=512, capacity_tokens=10_000,
    )  # fmt: skip
    calls = []
    spec.controller.plan = lambda cands, *args: calls.append(set(cands)) or SpecPlan({}, {})
    spec.controller.hold_idle = lambda: True
    requests = {
        name: SimpleNamespace(
            num_computed_tokens=9,
            num_tokens=10,
            max_tokens=50,
            num_output_tokens=2,
            spec_token_ids=[],
        )  # fmt: skip
        for name in ("a", "b")
    }
    for scheduled in ({"a": 1}, {"a": 1}, {"a": 1, "b": 1}):  # the second is held
        spec.add_drafts(SimpleNamespace(num_scheduled=scheduled, budget=100), requests)
    assert calls == [{"a"}, {"a", "b"}]


def test_steps_held_idle_are_observed_one_in_an_interval() -> None:
    """Of the steps with an empty plan held (nothing verified or proposed), one in
    IDLE_OBSERVE_INTERVAL feeds the step-cost fit; every other step is observed."""
    from corral.config import SpeculativeConfig
    from corral.core.kv_cache import KVCacheManager
    from corral.core.spec_decode import IDLE_OBSERVE_INTERVAL, SpecDecodeScheduling

    spec = SpecDecodeScheduling(
        SpeculativeConfig(method="ngram", num_speculative_tokens=4), KVCacheManager(64, 16),
        max_model_len=512, capacity_tokens=10_000,
    )  # fmt: skip
    observed = []
    spec.controller.observe_step = lambda *args: observed.append(args)
    scheduler_output = SimpleNamespace(
        num_scheduled_tokens={"a": 1}, total_num_scheduled_tokens=1, spec_token_ids={}
    )
    model_output = SimpleNamespace(
        step_time_s=0.001, propose_time_s=0.0, spec_token_ids={}, catchup_time_s=None
    )
    spec._held_idle = True
    for _ in range(3 * IDLE_OBSERVE_INTERVAL):
        spec.observe(scheduler_output, model_output)
    assert len(observed) == 3
    spec._held_idle = False
    for _ in range(5):
        spec.observe(scheduler_output, model_output)
    assert len(observed) == 8


def test_deep_drafts_are_granted_where_only_they_pay_for_the_call() -> None:
    """A draft model's proposal costs mostly per call (0.35 ms here) and little per pass
    (0.05 ms): a first draft standing 60% of the time does not pay for the call on a 0.6 ms
    step, four drafts do.
    The rule looks past the first depth; priced per pass alone (the fit without a call term)
    the first draft would have been as dear as the call and nothing granted."""
    controller = SpecController(4, pass_based=True)
    feed_costs(controller, fixed_s=0.0006, per_token_s=0.00002)
    for passes in (1, 4, 2, 4, 1, 3) * 4:
        controller.propose_cost.observe(passes, passes, 0.00035 + 0.00005 * passes)
    assert abs(controller.propose_cost.call_s - 0.00035) < 3e-5
    # Rounds of four drafts whose first 1, 2, 3, 4 stand 60%, 45%, 35%, 27% of the time.
    for num_accepted in (4,) * 16 + (3,) * 5 + (2,) * 6 + (1,) * 9 + (0,) * 24:
        controller.record("a", 4, num_accepted)
    plan = controller.plan(candidates(["a"], 0), 1, 0, budget=100)
    assert plan.propose == {"a": 4}
    # One draft alone: the same yield and costs do not pay (the depth-1 test of the old rule).
    one = SpecController(1)
    one.step_cost, one.propose_cost, one.accepted = (
        controller.step_cost,
        controller.propose_cost,
        controller.accepted,
    )
    assert one.plan(candidates(["a"], 0, max_k=1), 1, 0, budget=100).propose == {}


def test_a_timed_catch_up_is_priced_per_token_and_an_outlier_is_clipped() -> None:
    """Timed catch-ups (a prompt's prefill or tree) price a token by their tokens: a 3-token
    catch-up with a 20 ms pause inside (a garbage collection) moves the price little, where a
    mean of per-catch-up ratios had priced a token at 200 us and stopped all proposals."""
    estimate = ProposeCostEstimate()
    for num_tokens in (500, 3, 480, 2, 520, 3, 300):
        estimate.observe(1, 4, 2e-4 + 1e-5 * num_tokens, num_tokens, 1e-5 * num_tokens)
    assert estimate.coefficients()[2] == pytest.approx(1e-5)
    estimate.observe(1, 4, 0.0202, 3, 0.02)
    assert estimate.coefficients()[2] < 1.1e-5
    for _ in range(6):  # a real change in price is followed
        estimate.observe(1, 4, 2e-4 + 4e-5 * 500, 500, 4e-5 * 500)
    assert estimate.coefficients()[2] > 3e-5


def test_a_draft_model_untimed_only_starts() -> None:
    """Until a draft model's proposals have been timed, a few requests start proposing and
    nothing more is granted, however well drafts are accepted: untimed, proposals look free,
    and a fresh engine at 32 requests had every request draft on its second step."""
    controller = SpecController(4, pass_based=True)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    names = [f"r{i}" for i in range(32)]
    for name in names:
        feed_acceptance(controller, name, 10)
    plan = controller.plan(candidates(names, 0), 32, 0, budget=1000)
    assert plan.verify == {} and len(plan.propose) == 4


def test_a_draft_model_starts_by_measuring_acceptance() -> None:
    """Timed but with fewer than MIN_START_ROUNDS rounds recorded, a draft model's starters
    (those holding drafts first) verify what they hold and propose K again; once the rounds
    are in, the rule decides (here: acceptance nil, nothing granted)."""
    controller = SpecController(4, pass_based=True)
    for _ in range(MIN_PROPOSE_OBSERVATIONS):
        controller.observe_step(1, 0, 0.001, 0.0001, 4, catchup_time_s=0.0)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    names = [f"r{i}" for i in range(8)]
    cands = {name: Candidate(3 if name in ("r5", "r6") else 0, 4) for name in names}
    plan = controller.plan(cands, 8, 0, budget=1000)
    assert plan.verify == {"r5": 3, "r6": 3}
    assert set(plan.propose) == {"r5", "r6", "r0", "r1"} and set(plan.propose.values()) == {4}
    for _ in range(MIN_START_ROUNDS):
        controller.record("r5", 4, 0)
    assert controller.plan(candidates(names, 0), 8, 0, budget=1000).propose == {}
