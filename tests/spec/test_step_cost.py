"""The step-cost fit with requests counted (corral/spec/step_cost.py): a request's own cost,
a verifying request's bookkeeping and a draft row's cost come apart, slopes stay non-negative
where features move together, and the adaptive rule prices a draft at a draft row's cost, not
at a request's."""

from __future__ import annotations

import random

import pytest

from corral.spec import step_cost
from corral.spec.controller import Candidate, SpecController
from corral.spec.step_cost import StepCostEstimate, split_step

FIXED_S, REQUEST_S, ROW_S, VERIFY_S = 0.0008, 25e-6, 5e-6, 40e-6


def step_time_s(num_requests: int, num_drafts: int, num_verifying: int) -> float:
    return FIXED_S + REQUEST_S * num_requests + ROW_S * num_drafts + VERIFY_S * num_verifying


def mixed_steps(seed: int = 0):
    """(rows, prefill, verifying, requests, row requests, time) of decode steps of 8-32
    requests, some verifying one to four drafts."""
    rng = random.Random(seed)
    for _ in range(400):
        num_requests = rng.randint(8, 32)
        num_verifying = rng.randint(0, num_requests) if rng.random() < 0.6 else 0
        num_drafts = sum(rng.randint(1, 4) for _ in range(num_verifying))
        yield (
            num_requests + num_drafts,
            0,
            num_verifying,
            num_requests,
            num_requests,
            step_time_s(num_requests, num_drafts, num_verifying),
        )


def test_requests_verifications_and_draft_rows_come_apart() -> None:
    estimate = StepCostEstimate()
    for rows, prefill, verifying, requests, row_requests, t in mixed_steps():
        estimate.observe(rows, prefill, t, verifying, requests, row_requests)
    fixed, per_row, per_prefill = estimate.coefficients()
    assert abs(fixed - FIXED_S) < 2e-5
    assert abs(per_row - ROW_S) < 1e-6  # the ridge's pull toward its prior
    assert abs(estimate.per_request_s() - REQUEST_S) < 1e-6
    assert abs(estimate.per_verify_request_s() - VERIFY_S) < 2e-6
    assert per_prefill > 0  # no prefill seen: its prior, not zero


def test_features_that_move_together_keep_slopes_non_negative() -> None:
    """Decodes alone: every request one row, so rows and requests are the same number. The
    fit must neither trade a large positive slope for a negative one nor lose the mean."""
    estimate = StepCostEstimate()
    rng = random.Random(1)
    times = []
    for _ in range(300):
        n = rng.randint(4, 32)
        t = 0.001 + 30e-6 * n + rng.uniform(-2e-5, 2e-5)
        times.append((n, t))
        estimate.observe(n, 0, t, 0, n, n)
    fixed, per_row, _ = estimate.coefficients()
    per_request = estimate.per_request_s()
    assert min(fixed, per_row, per_request, estimate.per_verify_request_s()) >= 0
    assert abs(per_request - 30e-6) < 3e-6  # one row per request: the request carries it
    for n, t in times[-20:]:
        assert abs(fixed + per_request * n - t) < 5e-5


def test_drafts_are_priced_as_rows_where_requests_carry_the_step() -> None:
    """32 requests whose steps cost mostly per request (as small-model decodes do): a draft
    costs its row, and requests that accept most drafts get all four. Fitted on row tokens
    alone, the same steps made every draft look as dear as a request."""
    controller = SpecController(4)
    for rows, prefill, verifying, requests, row_requests, t in mixed_steps(2):
        controller.observe_step(rows, prefill, t, 0.0, 0, None, verifying, requests, row_requests)
    names = [f"r{i}" for i in range(32)]
    for name in names:
        for round_index in range(50):
            controller.record(name, 4, 4 if round_index % 10 < 7 else 3)
    plan = controller.plan(
        {name: Candidate(4, 4) for name in names},
        32,
        0,
        budget=4096,
        num_requests=32,
        num_row_requests=32,
    )
    assert plan.verify == dict.fromkeys(names, 4)
    assert plan.propose == dict.fromkeys(names, 4)


def test_a_costly_verification_is_not_started_for_a_poor_request() -> None:
    """Each verifying request costs as much as six requests' share of a step: a request whose
    drafts seldom stand gets none, one whose drafts all stand still gets its four."""
    controller = SpecController(4)
    rng = random.Random(3)
    for _ in range(400):
        num_requests = 16
        verifying = rng.randint(0, 16)
        drafts = 4 * verifying
        t = FIXED_S + REQUEST_S * num_requests + ROW_S * drafts + 0.00015 * verifying
        controller.observe_step(16 + drafts, 0, t, 0.0, 0, None, verifying, 16, 16)
    for _ in range(50):
        controller.record("good", 4, 4)
        controller.record("poor", 4, 0)
    cands = {f"x{i}": Candidate(0, 0) for i in range(14)}
    cands.update(good=Candidate(4, 4), poor=Candidate(4, 4))
    plan = controller.plan(cands, 16, 0, budget=4096, num_requests=16, num_row_requests=16)
    assert plan.verify.get("good") == 4
    assert "poor" not in plan.verify


def test_folding_observations_late_gives_the_same_fits() -> None:
    """Observations kept and folded in batches (nonnegative_fit.PendingObservations) leave
    both fits as folding each at once does, reads in between included (the propose-cost fit
    clips each observation against the fit as it stood)."""
    from corral.spec.propose_cost import ProposeCostEstimate

    rng = random.Random(3)
    eager_steps, late_steps = StepCostEstimate(), StepCostEstimate()
    eager_proposals, late_proposals = ProposeCostEstimate(), ProposeCostEstimate()
    for index, step in enumerate(mixed_steps(seed=1)):
        num_passes = rng.randint(1, 4)
        proposal = (num_passes, num_passes * rng.randint(1, 3), rng.uniform(1e-4, 3e-3), 0, None)
        for fit, observation in ((eager_steps, step), (eager_proposals, proposal)):
            fit.observe(*observation)
            fit.fold_pending()
        late_steps.observe(*step)
        late_proposals.observe(*proposal)
        if index % 7 == 0:
            assert late_steps.coefficients() == eager_steps.coefficients()
            assert late_proposals.coefficients() == eager_proposals.coefficients()
        elif index % 11 == 0:
            late_steps.fold_pending()
    assert late_steps.num_observations == eager_steps.num_observations
    assert late_steps.num_pending == 0
    assert late_steps.coefficients() == eager_steps.coefficients()
    assert late_steps.per_request_s() == eager_steps.per_request_s()
    assert late_proposals.coefficients() == eager_proposals.coefficients()
    assert late_proposals.call_s == eager_proposals.call_s > 0


def test_a_short_chunk_counts_its_first_token_and_drafts_as_rows_its_prompt_tail_as_prefill():
    # (tokens, of which drafts): a decode, a verification of 3 drafts, a prompt's 11-token
    # tail, a long prefill chunk.
    assert split_step([(1, 0), (4, 3), (11, 0), (70, 0)]) == (1 + 4 + 1, 10 + 70, 3)
    assert split_step([]) == (0, 0, 0)


def test_prompt_tails_do_not_price_drafts() -> None:
    """Steps where prompts end in short chunks beside their requests' first samples (dear: a
    prefill's end and new requests' first tokens) among decode steps that verify a few drafts
    now and then: a draft is priced near its own row cost. Counted as row tokens, the tails
    had priced it at several times that."""
    controller = SpecController(4)
    rng = random.Random(5)
    for index in range(600):
        num_requests = rng.randint(24, 32)
        if index % 40 == 0:  # 31 prompts end with 11 tail tokens among them, at 2.5x a step
            chunks = [(1 + (i < 11), 0) for i in range(31)]
            t = 2.5 * (FIXED_S + REQUEST_S * 31)
        else:
            verifying = 4 if index % 16 == 0 else 0
            chunks = [(1 + (4 if i < verifying else 0), 4 if i < verifying else 0)
                      for i in range(num_requests)]  # fmt: skip
            t = FIXED_S + REQUEST_S * num_requests + ROW_S * 4 * verifying
        rows, prefill, row_requests = split_step(chunks)
        verifying_now = sum(1 for _, drafts in chunks if drafts)
        controller.observe_step(
            rows, prefill, t, 0.0, 0, None, verifying_now, len(chunks), row_requests
        )
    _, per_row, _ = controller.step_cost.coefficients()
    assert per_row < 3 * ROW_S


def test_stored_sums_multiplied_out_give_the_same_fit(monkeypatch) -> None:
    """The step-cost fit keeps its sums divided by the decays' product and multiplies them out
    when that grows small; doing so at every observation changes nothing."""
    reference = StepCostEstimate()
    for step in mixed_steps(seed=4):
        reference.observe(*step[:2], step[5], *step[2:5])
    monkeypatch.setattr(step_cost, "_MIN_SCALE", 1.0)  # every observation
    rescaled = StepCostEstimate()
    for step in mixed_steps(seed=4):
        rescaled.observe(*step[:2], step[5], *step[2:5])
    for a, b in zip(rescaled._coefficients(), reference._coefficients()):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_prefill_steps_do_not_set_a_requests_price() -> None:
    """A fresh engine's first steps prefill its prompts, whose cost the linear features only
    approximate (here a term in the square of each step's prompt tokens, and more requests in
    the cheaper prefills): weighted below decode steps, they leave a request's price near what
    the decode steps show."""
    estimate = StepCostEstimate()
    rng = random.Random(7)
    for index in range(60):
        if index % 6 == 0:  # a prefill of 32 prompts in chunks of 2,048 tokens
            prefill = rng.choice((512, 1024, 2048))
            requests = 31 if prefill == 512 else rng.randint(4, 12)
            t = 0.0005 + 14e-6 * prefill + 1e-9 * prefill**2
            estimate.observe(0, prefill, t, 0, requests, 0)
        else:
            n = rng.randint(24, 32)
            estimate.observe(n, 0, 0.0005 + 30e-6 * n, 0, n, n)
    assert estimate.per_request_s() == pytest.approx(30e-6, rel=0.2)
