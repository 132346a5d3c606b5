"""How many draft tokens each request verifies and proposes per step (torch-free; scheduler and
simulator).

Rule "fixed": always K. Rule "adaptive" (the default) keeps speculation from costing throughput.
With a request's measured acceptance alpha (the chance that a draft token stands given that the
ones before it did), its j-th draft token yields alpha^j tokens in expectation. Each step makes
two decisions with the same greedy rule: draft tokens are granted, best expected yield first,
while each one's yield per second of its cost beats the step's tokens per second so far.

- Verify: how many of the drafts a request already holds to score now. Their proposal is paid
  for; a draft costs one more token of the target's step (the slope of a live fit of step time
  on tokens, corral/spec/step_cost.py).
- Propose: how many drafts to ask for, to verify next step. A draft costs its verification plus
  its proposal (corral/spec/propose_cost.py: per token, and per pass for a draft model, where
  one more pass is paid by whichever request first needs that depth). Costs that deeper drafts
  share (a draft model's call, a request's verification bookkeeping and share of a catch-up)
  make the rule look past a depth that does not pay alone.

A large compute-bound batch gets none, a lone request with a good proposer gets K. After
PROBE_INTERVAL_STEPS steps without speculation a few requests propose one draft and verify it
the next step, so that acceptance stays measured. A plan is held for its batch a few steps
(empty: IDLE_HOLD_STEPS, drafting: PLAN_HOLD_STEPS) before the rule runs again.
"""

from __future__ import annotations

from corral.spec.acceptance import AcceptanceEstimate
from corral.spec.candidates import (
    Candidate,
    SpecPlan,
    catchup_tokens,
    horizon_steps,
    plan_at_depths,
    probe_order,
    proposing_ids,
    start_plan,
)
from corral.spec.grant import GrantCosts, choose_probes, grant_depths, no_grant_can_pay
from corral.spec.nonnegative_fit import MAX_PENDING_OBSERVATIONS
from corral.spec.plan_hold import PlanHold
from corral.spec.propose_cost import ProposeCostEstimate
from corral.spec.stats import SpecDecodeStats
from corral.spec.step_cost import StepCostEstimate

# A draft model's proposals timed, and verification rounds recorded, before the rule grants
# any beyond a few starters (_start).
MIN_PROPOSE_OBSERVATIONS = 2
MIN_START_ROUNDS = 16
PROBE_INTERVAL_STEPS = 64
MAX_PROBE_INTERVAL = 4096
NUM_PROBE_REQUESTS = 4
# A probe's cost (its catch-up, a proposed and a verified draft) may take at most this share of
# the time since the last probe: a draft model's probe of a request it has not followed costs a
# prefill of the whole sequence (6-7 ms alone on the demo models, 7% of a run at concurrency 1).
# At 32 requests, where neither the draft model nor the suffix proposer paid, their probes'
# catch-ups (7-11 ms each) were most of what speculation cost against off at 2%.
PROBE_TIME_FRACTION = 0.01


class SpecController:
    """Chooses K per request (plan), learns from verification rounds (record) and step times
    (observe_step)."""

    def __init__(
        self, max_num_tokens: int, rule: str = "adaptive", pass_based: bool = False
    ) -> None:
        if rule not in ("adaptive", "fixed"):
            raise ValueError(f"num_tokens_rule must be 'adaptive' or 'fixed', got {rule!r}")
        self.max_num_tokens = max_num_tokens
        self.rule = rule
        self.step_cost = StepCostEstimate()
        self.stats = SpecDecodeStats()
        self.accepted = AcceptanceEstimate()
        # Proposal cost per proposed token, EWMA (seconds).
        self.propose_cost = ProposeCostEstimate()
        self.num_steps_without_drafts = 0
        self._probed: set[str] = set()
        self.probe_interval_steps = PROBE_INTERVAL_STEPS
        self._last_num_passes = 0
        self._last_catchup_tokens = 0
        # plan's shortcut when nothing can pay (_nothing_pays); False: always the full rule.
        self.use_bound = True
        self.hold = PlanHold()
        # True for a proposer that runs a model in passes (a draft model,
        # SpeculativeConfig.runs_in_passes), whose proposals cost mostly per call and little per
        # pass. Only for such a proposer does the rule price the call apart and start and probe
        # at full depth; for lookups (n-gram, suffix) the call is priced as a pass.
        self.pass_based = pass_based

    # ----- learning -----------------------------------------------------------------------

    def record(self, request_id: str, num_draft_tokens: int, num_accepted: int) -> None:
        """A verification round of request_id: num_draft_tokens scored, num_accepted accepted."""
        self.stats.record(num_draft_tokens, num_accepted)
        self.accepted.record(request_id, num_draft_tokens, num_accepted)

    def observe_step(
        self,
        num_row_tokens: int,
        num_prefill_tokens: int,
        step_time_s: float,
        propose_time_s: float,
        num_proposed: int,
        catchup_time_s: float | None = None,
        num_verify_requests: int = 0,
        num_requests: int = 0,
        num_row_requests: int = 0,
    ) -> None:
        """One step's cost: its row and prefill tokens, the requests that verified drafts in it
        and all it scheduled, num_row_requests of them in rows (corral/spec/step_cost.py; 0
        requests: not counted); step_time_s in all, of which propose_time_s went to proposing
        num_proposed tokens for the next step, and of that catchup_time_s to catching up, where
        the proposer timed it (else the propose-cost fit separates it)."""
        self.step_cost.observe(
            num_row_tokens,
            num_prefill_tokens,
            step_time_s - propose_time_s,
            num_verify_requests,
            num_requests,
            num_row_requests,
        )
        if num_proposed > 0:
            self.propose_cost.observe(
                max(self._last_num_passes, 1),
                num_proposed,
                propose_time_s,
                self._last_catchup_tokens,
                catchup_time_s,
            )
        # Folded between steps before a step that may plan (not inside the step the fit times).
        if not self.hold.is_held or self.step_cost.num_pending >= MAX_PENDING_OBSERVATIONS:
            self.step_cost.fold_pending()
            self.propose_cost.fold_pending()

    def forget(self, request_id: str) -> None:
        self.accepted.forget(request_id)

    def acceptance(self, request_id: str | None) -> float:
        """The request's estimated per-token acceptance (corral/spec/acceptance.py)."""
        return self.accepted.acceptance(request_id)

    def depth_yields(
        self, request_id: str, max_depth: int, profile: list[float] | None = None
    ) -> list[float]:
        """Expected yield of the request's draft at each depth 1..max_depth."""
        return self.accepted.depth_yields(request_id, max_depth, profile)

    def depth_profile(self, max_depth: int) -> list[float]:
        """[j - 1]: the proposer's measured chance that a round's first j drafts all stand."""
        return self.accepted.depth_profile(max_depth)

    # ----- deciding -----------------------------------------------------------------------

    def hold_idle(self) -> bool:
        """True: the adaptive rule granted nothing at its last plan, within IDLE_HOLD_STEPS
        steps, and no probe is due; this step is counted as one without drafts and the caller
        plans nothing, without building candidates. The caller calls it only for the batch it
        last planned or part of it (a batch with a request new to it is planned in full)."""
        if self.num_steps_without_drafts + 1 >= self.probe_interval_steps:
            return False  # the probe's step runs the rule
        if not self.hold.take_idle():
            return False
        self.num_steps_without_drafts += 1
        self._last_num_passes = 0
        self._last_catchup_tokens = 0
        return True

    def plan(
        self,
        candidates: dict[str, Candidate],
        num_row_tokens: int,
        num_prefill_tokens: int,
        budget: int,
        num_requests: int = 0,
        num_row_requests: int = 0,
    ) -> SpecPlan:
        """Drafts to verify now (at most held, within budget) and to propose next, per
        candidate. Without drafts the step computes num_row_tokens in short chunks (decodes)
        and num_prefill_tokens in long ones for num_requests requests, num_row_requests of them
        in short chunks (0: requests not counted, as observe_step was told), and samples one
        token per candidate."""
        if self.rule == "fixed":
            everyone = dict.fromkeys(candidates, self.max_num_tokens)
            return self._count(plan_at_depths(everyone, candidates, self.max_num_tokens, budget))
        proposing = self.hold.take_proposals(candidates) if not self._probed else None
        if proposing is not None:
            plan = plan_at_depths(proposing, candidates, self.max_num_tokens, budget)
            self._last_catchup_tokens = sum(catchup_tokens(candidates[rid]) for rid in plan.propose)
            return self._count(plan)
        if not self.step_cost.is_ready or (
            self.pass_based
            and (
                self.propose_cost.num_observations < MIN_PROPOSE_OBSERVATIONS
                or self.stats.num_drafts < MIN_START_ROUNDS
            )
        ):
            return self._count(self._start(candidates, budget))
        fixed_s, per_token_s, per_prefill_s = self.step_cost.coefficients()
        # Counted requests cost per_request_s each, their first row included; a candidate of a
        # decode-only step costs that (else one row token).
        request_fixed_s = self.step_cost.per_request_s()
        per_candidate_s = request_fixed_s if num_requests else per_token_s
        fixed_s_now = fixed_s + request_fixed_s * num_requests
        # A request's drafts cost its verification's bookkeeping once, whatever their number.
        request_s = self.step_cost.per_verify_request_s()
        pass_s, token_s, catchup_s = self.propose_cost.coefficients()
        call_s = self.propose_cost.call_s
        if not self.pass_based:
            pass_s, call_s = pass_s + call_s, 0.0
        decode_step_s = fixed_s + per_candidate_s * len(candidates)
        if self.use_bound and self._nothing_pays(
            candidates, decode_step_s, per_token_s, pass_s, token_s, call_s, request_s
        ):
            self._probed = set()
            costs = (decode_step_s, per_token_s, pass_s, token_s, catchup_s)
            return self._finish(candidates, {}, {}, False, costs)
        tokens = float(max(len(candidates), 1))
        time_s = (
            fixed_s_now
            + per_token_s * (num_row_tokens - num_row_requests)
            + per_prefill_s * num_prefill_tokens
        )
        verify_limits = {
            rid: min(c.num_held, c.max_num_tokens, self.max_num_tokens)
            for rid, c in candidates.items()
        }
        profile = self.depth_profile(self.max_num_tokens)
        verify_starts = dict.fromkeys(verify_limits, request_s)
        yields = self.accepted.depth_yields_of(candidates, self.max_num_tokens, profile)
        verify, tokens, time_s = self._grant(
            verify_limits, tokens, time_s, per_token_s, 0.0, budget, verify_starts, yields
        )
        chose_drafts = bool(verify)
        for request_id in self._probed:
            # A probe's drafts are always verified (their acceptance at every depth is what
            # the probe measures).
            held = verify_limits.get(request_id, 0)
            room = budget - sum(verify.values())
            if held > verify.get(request_id, 0) and room > 0:
                verify[request_id] = min(held, verify.get(request_id, 0) + room)
        self._probed = set()
        propose_limits = {
            rid: min(c.max_num_tokens, self.max_num_tokens) for rid, c in candidates.items()
        }
        start_costs = {
            rid: request_s + catchup_s * catchup_tokens(c) / horizon_steps(c)
            for rid, c in candidates.items()
        }
        # Drafts proposed now are verified next step. This step's prefill work says nothing of
        # that step's rate, and counted here it made any draft look cheap (a step of 2,000
        # prompt tokens granted 76 drafts and a 2,151-token catch-up to a batch of 29): they
        # are priced against a step that only decodes the candidates.
        decode_tokens = float(max(len(candidates), 1))
        propose, _, _ = self._grant(
            propose_limits,
            decode_tokens,
            decode_step_s,
            per_token_s + token_s,
            pass_s,
            None,
            start_costs,
            yields,
            call_s,
        )
        costs = (decode_step_s, per_token_s, pass_s, token_s, catchup_s)
        return self._finish(candidates, verify, propose, chose_drafts, costs)

    def _start(self, candidates: dict[str, Candidate], budget: int) -> SpecPlan:
        """Before the rule has measured enough (candidates.start_plan): a draft model's
        proposals untimed look free (a fresh draft engine at 32 requests had every request
        draft on its second step, at 0.8x of off), and its acceptance unmeasured is the
        prior's (0.6 a token, where the demo draft model gets about 0.45 on the repeat
        workload)."""
        depth = self.max_num_tokens if self.pass_based else 1
        plan = start_plan(candidates, depth, self.max_num_tokens, budget, NUM_PROBE_REQUESTS)
        self._last_catchup_tokens = sum(catchup_tokens(candidates[rid]) for rid in plan.propose)
        return plan

    def _nothing_pays(
        self,
        candidates: dict[str, Candidate],
        decode_step_s: float,
        per_token_s: float,
        pass_s: float,
        token_s: float,
        call_s: float = 0.0,
        request_s: float = 0.0,
    ) -> bool:
        """True when plan would grant nothing, shown cheaply: no candidate holds drafts (so none
        is verified) and no proposal can pay (grant.no_grant_can_pay; depth 1 only unless
        pass_based). The speculation machinery's idle cost was 5-10% of a single-stream step
        without this."""
        eligible = proposing_ids(candidates)
        if eligible is None:
            return False  # held drafts are verified
        if not eligible:
            return True
        max_depth = min(
            self.max_num_tokens if self.pass_based else 1,
            max(candidates[rid].max_num_tokens for rid in eligible),
        )
        profile = self.depth_profile(max_depth)  # sets accepted.global_alpha
        global_alpha = self.accepted.global_alpha
        best = max(self.acceptance(request_id) for request_id in eligible)
        return no_grant_can_pay(
            profile,
            best / global_alpha if global_alpha > 0 else 1.0,
            len(eligible),
            len(candidates),
            decode_step_s,
            GrantCosts(per_token_s + token_s, pass_s, call_s),
            request_s,
        )

    def _finish(
        self,
        candidates: dict[str, Candidate],
        verify: dict[str, int],
        propose: dict[str, int],
        chose_drafts: bool,
        costs: tuple[float, float, float, float, float],
    ) -> SpecPlan:
        """The probe schedule after a plan, then the plan counted. costs: a decode step of the
        candidates and a row token in seconds, the proposal's per-pass, per-token and
        per-catch-up-token seconds."""
        if chose_drafts or propose:
            self.num_steps_without_drafts = 0
            self.probe_interval_steps = PROBE_INTERVAL_STEPS
        else:
            self.num_steps_without_drafts += 1
            if self.num_steps_without_drafts >= self.probe_interval_steps:
                self.num_steps_without_drafts = 0
                decode_step_s, per_token_s, pass_s, token_s, catchup_s = costs
                budget_s = PROBE_TIME_FRACTION * self.probe_interval_steps * decode_step_s
                # Probes that keep finding nothing worth it come ever more rarely (a draft
                # model's probe costs a catch-up over the whole sequence).
                self.probe_interval_steps = min(2 * self.probe_interval_steps, MAX_PROBE_INTERVAL)
                propose = choose_probes(
                    probe_order(candidates, self.max_num_tokens, NUM_PROBE_REQUESTS),
                    self.max_num_tokens if self.pass_based else 1,
                    budget_s,
                    GrantCosts(
                        per_token_s + token_s,
                        pass_s,
                        self.propose_cost.call_s if self.pass_based else 0.0,
                    ),
                    catchup_s,
                )
                self._probed = set(propose)
        self._last_catchup_tokens = sum(catchup_tokens(candidates[rid]) for rid in propose)
        # Held only where the rule chose nothing; a batch none of whose requests could take a
        # draft (each at a prefill's end or its last token) says nothing of the steps after it.
        could_draft = any(
            min(c.max_num_tokens, self.max_num_tokens) > 0 for c in candidates.values()
        )
        self.hold.start(
            candidates,
            propose if not self._probed else {},
            idle=could_draft and not (verify or propose),
        )
        return self._count(SpecPlan(verify, propose))

    def _count(self, plan: SpecPlan) -> SpecPlan:
        self.stats.num_planned_requests += len(plan.propose)
        self.stats.num_planned_tokens += sum(plan.propose.values())
        self._last_num_passes = max(plan.propose.values(), default=0)
        return plan

    def _grant(
        self,
        limits: dict[str, int],
        tokens: float,
        time_s: float,
        token_cost_s: float,
        pass_cost_s: float,
        budget: int | None,
        start_costs: dict[str, float] | None = None,
        yields: dict[str, list[float]] | None = None,
        call_cost_s: float = 0.0,
    ) -> tuple[dict[str, int], float, float]:
        """grant_depths (corral/spec/grant.py) on the requests' expected yields at each depth
        (yields: depth_yields of each request to at least its limit, worked out here if None),
        looking ahead wherever depths share a cost."""
        if time_s <= 0:
            return {}, tokens, time_s
        granted = [rid for rid, limit in limits.items() if limit > 0]
        if yields is None:
            yields = self.accepted.depth_yields_of(granted, self.max_num_tokens)
        costs = GrantCosts(token_cost_s, pass_cost_s, call_cost_s, start_costs or {})
        return grant_depths(
            limits,
            {rid: yields[rid] for rid in granted},
            tokens,
            time_s,
            costs,
            budget,
            self.max_num_tokens,
        )
