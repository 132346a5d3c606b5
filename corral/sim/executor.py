"""SimExecutor: the model executor's contract with a cost model in place of the model."""

from __future__ import annotations

from types import MappingProxyType

from corral.core.batch_shape import BatchShape, BatchShapeCounter
from corral.core.messages import ModelOutput, SchedulerOutput
from corral.sim.cost.base import CostModel
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID

# Shared and never mutated: the scheduler only iterates over sampled token lists.
_PLACEHOLDER = [PLACEHOLDER_TOKEN_ID]
# Read-only empties for the ModelOutput fields a simulated step never fills.
_NO_LOGPROBS: MappingProxyType = MappingProxyType({})


class SimExecutor:
    """execute(SchedulerOutput) -> ModelOutput, like corral.model.executor.ModelExecutor.

    Follows each request it was told about (BatchShapeCounter); samples the placeholder token for
    each request whose chunk reaches its last token; the step time comes from the cost model and
    is returned in ModelOutput.step_time_s (virtual seconds).
    """

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        self._counter = BatchShapeCounter()
        self.last_batch: BatchShape | None = None

    @property
    def num_requests(self) -> int:
        return self._counter.num_requests

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Advance every scheduled request's computed count and time the step."""
        batch, sampled_ids = self._counter.count(scheduler_output)
        sampled = dict.fromkeys(sampled_ids, _PLACEHOLDER)
        self.last_batch = batch
        if batch is None:
            return ModelOutput(sampled_token_ids=sampled)
        step_time_s = self.cost_model.step_time_s(batch)
        return ModelOutput(sampled, _NO_LOGPROBS, _NO_LOGPROBS, step_time_s, ())
