"""Plans kept a few steps (torch-free; corral/spec/controller.py): the adaptive rule's inputs
move little from one step to the next, and running it every step was most of what speculation
cost where it paid least (a single request's step, a 32-request batch that drafts nothing)."""

from __future__ import annotations

from collections.abc import Iterable

# After a plan that granted nothing, the same batch (or what is left of it as requests finish)
# keeps that plan this many more steps without running the rule (hold_idle): while nothing is
# drafted no acceptance changes, only the step-cost fit, and the rule's own work was most of
# speculation's idle cost (about 35 us a step alone; at 32 requests a plan and its candidates
# 150 us, 1.3% of 8 steps).
IDLE_HOLD_STEPS = 15
# After a plan that proposed drafts, the same batch (or what is left of it) keeps its proposals
# this many more steps (plan_at_depths) before the rule runs again: its inputs move little in a
# few steps, and its work cost single-request speculation 5-10% against a fixed K (60-75 us a
# step), and 2-4% of a 32-request demo-model step (a plan of 32 took 0.1-0.2 ms).
PLAN_HOLD_STEPS = 7


class PlanHold:
    """The last plan's hold: an empty plan's steps left, or a drafting plan's proposals for
    its batch and steps left."""

    __slots__ = ("num_idle_steps_left", "num_plan_steps_left", "proposals", "batch")

    def __init__(self) -> None:
        self.num_idle_steps_left = 0
        self.num_plan_steps_left = 0
        self.proposals: dict[str, int] = {}
        self.batch: frozenset[str] = frozenset()

    @property
    def is_held(self) -> bool:
        """Whether the next step may still take a held plan (either kind)."""
        return self.num_plan_steps_left > 0 or self.num_idle_steps_left > 0

    def take_idle(self) -> bool:
        """One step of an empty plan's hold, if any is left."""
        if self.num_idle_steps_left <= 0:
            return False
        self.num_idle_steps_left -= 1
        return True

    def take_proposals(self, candidate_ids: Iterable[str]) -> dict[str, int] | None:
        """One step of a drafting plan's hold: its proposals for the candidates, when all of
        them were in its batch (else None, and the hold ends)."""
        if self.num_plan_steps_left <= 0:
            return None
        if not self.batch.issuperset(candidate_ids):
            self.num_plan_steps_left = 0
            return None
        self.num_plan_steps_left -= 1
        held = self.proposals
        return {rid: held[rid] for rid in candidate_ids if rid in held}

    def start(self, batch: Iterable[str], propose: dict[str, int], idle: bool) -> None:
        """After a full plan: hold its proposals for its batch (propose non-empty), or hold it
        empty (idle), or nothing."""
        self.num_idle_steps_left = IDLE_HOLD_STEPS if idle else 0
        self.num_plan_steps_left = PLAN_HOLD_STEPS if propose else 0
        self.proposals = dict(propose)
        self.batch = frozenset(batch) if propose else frozenset()
