"""SimExecutor: the model executor's contract with a cost model in place of the model."""

from __future__ import annotations

from types import MappingProxyType

from corral.core.messages import ModelOutput, SchedulerOutput
from corral.sim.batch import BatchShape
from corral.sim.cost.base import CostModel
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID

# Shared and never mutated: the scheduler only iterates over sampled token lists.
_PLACEHOLDER = [PLACEHOLDER_TOKEN_ID]
# Read-only empties for the ModelOutput fields a simulated step never fills.
_NO_LOGPROBS: MappingProxyType = MappingProxyType({})


class SimExecutor:
    """execute(SchedulerOutput) -> ModelOutput, like corral.model.executor.ModelExecutor.

    Keeps, per request it was told about, [num_tokens, num_computed_tokens]; samples the
    placeholder token for each request whose chunk reaches its last token; the step time comes
    from the cost model and is returned in ModelOutput.step_time_s (virtual seconds).
    """

    def __init__(self, cost_model: CostModel | None) -> None:
        # None: shapes only (every step takes 0 s), for recording a real engine's steps.
        self.cost_model = cost_model
        self._states: dict[str, list[int]] = {}
        self.last_batch: BatchShape | None = None

    @property
    def num_requests(self) -> int:
        return len(self._states)

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Advance every scheduled request's computed count and time the step."""
        states = self._states
        for request_id in scheduler_output.finished_request_ids:
            states.pop(request_id, None)
        for request_id in scheduler_output.preempted_request_ids:
            states.pop(request_id, None)
        for new in scheduler_output.new_requests:
            states[new.request_id] = [len(new.token_ids), new.num_computed_tokens]
        sampled: dict[str, list[int]] = {}
        p_tokens = p_requests = p_context = p_pairs = 0
        d_requests = d_context = d_max = 0
        for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            state = states[request_id]
            context = state[1]
            if num_tokens == 1:
                d_requests += 1
                d_context += context + 1
                if context >= d_max:
                    d_max = context + 1
            else:
                p_tokens += num_tokens
                p_requests += 1
                p_context += context
                p_pairs += num_tokens * context + num_tokens * (num_tokens + 1) // 2
            context += num_tokens
            state[1] = context
            if context == state[0]:
                sampled[request_id] = _PLACEHOLDER
                state[0] += 1
        if not scheduler_output.num_scheduled_tokens:
            self.last_batch = None
            return ModelOutput(sampled_token_ids=sampled)
        batch = BatchShape(
            p_tokens, p_requests, p_context, p_pairs, d_requests, d_context, d_max, len(sampled)
        )
        self.last_batch = batch
        step_time_s = 0.0 if self.cost_model is None else self.cost_model.step_time_s(batch)
        return ModelOutput(sampled, _NO_LOGPROBS, _NO_LOGPROBS, step_time_s, ())
