"""The adaptive number of draft tokens (torch-free): it follows measured acceptance and step
cost, and gives none where verification costs more than it yields."""

from __future__ import annotations

from corral.spec.controller import PROBE_INTERVAL_STEPS, SpecController
from corral.spec.step_cost import StepCostEstimate


def feed_costs(controller: SpecController, fixed_s: float, per_token_s: float) -> None:
    for num_tokens in (1, 2, 5, 8, 16, 32, 64, 100, 160, 3, 40):
        controller.observe_step(num_tokens, fixed_s + per_token_s * num_tokens, 0.0, 0)


def feed_acceptance(controller: SpecController, request_id: str, rate_in_10: int) -> None:
    for round_index in range(50):
        accepted = 1 if round_index % 10 < rate_in_10 else 0
        controller.record(request_id, 1, accepted)


def test_step_cost_fit_recovers_a_line() -> None:
    estimate = StepCostEstimate()
    for num_tokens in range(1, 200, 7):
        estimate.observe(num_tokens, 0.002 + 0.0001 * num_tokens)
    fixed, slope = estimate.coefficients()
    assert abs(fixed - 0.002) < 2e-4
    assert abs(slope - 0.0001) < 1e-5


def test_step_cost_without_spread_uses_the_prior() -> None:
    estimate = StepCostEstimate(prior_per_token_fraction=1 / 50)
    for _ in range(20):
        estimate.observe(10, 0.012)
    fixed, slope = estimate.coefficients()
    # t = fixed * (1 + n / 50) at n = 10, t = 0.012  =>  fixed = 0.01, slope = 0.0002.
    assert abs(slope - 0.0002) < 2e-5
    assert abs(fixed + 10 * slope - 0.012) < 1e-9


def test_fixed_rule_gives_k_within_budget() -> None:
    controller = SpecController(4, "fixed")
    plan = controller.plan({"a": 4, "b": 2, "c": 4}, 3, 3, budget=7)
    assert plan == {"a": 4, "b": 2, "c": 1}


def test_lone_request_on_overhead_bound_steps_gets_k() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.00002)
    feed_acceptance(controller, "a", 8)
    assert controller.plan({"a": 4}, 1, 1, budget=100) == {"a": 4}


def test_large_compute_bound_batch_gets_none() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    candidates = {f"r{i}": 4 for i in range(32)}
    for request_id in candidates:
        feed_acceptance(controller, request_id, 6)
    assert controller.plan(candidates, 32, 32, budget=1000) == {}


def test_better_acceptance_gets_more_tokens() -> None:
    controller = SpecController(6)
    feed_costs(controller, fixed_s=0.002, per_token_s=0.0001)
    feed_acceptance(controller, "good", 9)
    feed_acceptance(controller, "poor", 2)
    plan = controller.plan({"good": 6, "poor": 6}, 2, 2, budget=100)
    assert plan.get("good", 0) > plan.get("poor", 0)


def test_plan_respects_each_requests_cap_and_budget() -> None:
    controller = SpecController(8)
    feed_costs(controller, fixed_s=0.01, per_token_s=0.0)
    feed_acceptance(controller, "a", 10)
    feed_acceptance(controller, "b", 10)
    plan = controller.plan({"a": 2, "b": 8}, 2, 2, budget=5)
    assert plan["a"] <= 2 and sum(plan.values()) == 5


def test_probes_keep_learning_after_a_long_pause() -> None:
    controller = SpecController(4)
    feed_costs(controller, fixed_s=0.001, per_token_s=0.0002)
    for request_id in ("a", "b"):
        feed_acceptance(controller, request_id, 0)
    plans = [
        controller.plan({"a": 4, "b": 4}, 2, 2, budget=100) for _ in range(PROBE_INTERVAL_STEPS)
    ]
    assert all(plan == {} for plan in plans[:-1])
    assert plans[-1] == {"a": 1, "b": 1}


def test_acceptance_shrinks_toward_the_proposers_rate() -> None:
    controller = SpecController(4)
    for _ in range(100):
        controller.record("old", 4, 4)
    # A new request starts near the proposer-wide estimate, not the prior.
    assert controller.acceptance("new") > 0.9
    controller.record("new", 4, 0)
    assert controller.acceptance("new") < controller.acceptance("old")
