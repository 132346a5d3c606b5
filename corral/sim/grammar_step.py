"""The simulated executor's grammar side: what the constrained rows' masks add to a step, and
the constrained-decoding counters the report shows.

In the engine (corral/model/sampling_step.py) a step fills and applies one bitmask row per
sampled row of a constrained request (k + 1 rows for one that verifies k drafts); rows that do
not sample (a prefill chunk short of the prompt's end) are not masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from corral.core.messages import SchedulerOutput
from corral.sim.structured import GrammarCompiles


class GrammarMaskPricer:
    """Follows the constrained requests (constrain() when one reaches the scheduler; forgotten
    when a step lists it finished) and prices each step's masks."""

    def __init__(self, mask_s_per_row: float, mask_s_per_step: float = 0.0) -> None:
        self.mask_s_per_row = mask_s_per_row
        self.mask_s_per_step = mask_s_per_step
        self._constrained_ids: set[str] = set()
        self.num_rows = 0
        self.num_steps = 0  # steps with at least one constrained row
        self.time_s = 0.0

    def constrain(self, request_id: str) -> None:
        self._constrained_ids.add(request_id)

    def step_time_s(self, scheduler_output: SchedulerOutput, sampled_ids: Iterable[str]) -> float:
        """Seconds the masks add to this step (sampled_ids: the requests that sample in it)."""
        constrained = self._constrained_ids
        for request_id in scheduler_output.finished_request_ids:
            constrained.discard(request_id)
        if not constrained:
            return 0.0
        drafts = scheduler_output.spec_token_ids
        num_rows = 0
        for request_id in sampled_ids:
            if request_id in constrained:
                verified = drafts.get(request_id)
                num_rows += 1 if verified is None else 1 + len(verified)
        if not num_rows:
            return 0.0
        time_s = self.mask_s_per_step + num_rows * self.mask_s_per_row
        self.num_rows += num_rows
        self.num_steps += 1
        self.time_s += time_s
        return time_s


@dataclass(frozen=True, slots=True)
class SimStructuredStats:
    """Constrained decoding on one instance, or summed over several. A request is counted once
    per instance it is submitted to (twice when disaggregated: prefill and decode legs)."""

    num_submitted: int = 0
    num_cold_compiles: int = 0
    num_cached_compiles: int = 0
    compile_wait_s: float = 0.0  # summed: submission to ready for the scheduler
    max_compile_wait_s: float = 0.0
    num_mask_rows: int = 0
    num_mask_steps: int = 0
    mask_time_s: float = 0.0

    @classmethod
    def of(cls, compiles: GrammarCompiles, pricer: GrammarMaskPricer) -> SimStructuredStats:
        return cls(
            compiles.num_submitted,
            compiles.num_cold,
            compiles.num_cached,
            compiles.wait_s,
            compiles.max_wait_s,
            pricer.num_rows,
            pricer.num_steps,
            pricer.time_s,
        )

    @property
    def mean_compile_wait_s(self) -> float:
        return self.compile_wait_s / self.num_submitted if self.num_submitted else 0.0


def merge_structured_stats(
    stats: Iterable[SimStructuredStats | None],
) -> SimStructuredStats | None:
    present = [s for s in stats if s is not None]
    if not present:
        return None
    return SimStructuredStats(
        sum(s.num_submitted for s in present),
        sum(s.num_cold_compiles for s in present),
        sum(s.num_cached_compiles for s in present),
        sum(s.compile_wait_s for s in present),
        max(s.max_compile_wait_s for s in present),
        sum(s.num_mask_rows for s in present),
        sum(s.num_mask_steps for s in present),
        sum(s.mask_time_s for s in present),
    )
