"""SimExecutor: the model executor's contract with a cost model in place of the model."""

from __future__ import annotations

import random
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from corral.core.batch_shape import BatchShape, BatchShapeCounter
from corral.core.messages import ModelOutput, SchedulerOutput
from corral.sim.cost.base import CostModel
from corral.sim.grammar_step import GrammarMaskPricer
from corral.sim.lora_step import LoRAStepPricer
from corral.sim.rag_step import DEFAULT_NUM_LAYERS, blended_shape
from corral.sim.spec import (
    MAX_NUM_DRAFT_POSITIONS,
    SpecSimConfig,
    draft_loop_pass_times_s,
    draft_pass_shapes,
)
from corral.workloads.tokens import PLACEHOLDER_TOKEN_ID

if TYPE_CHECKING:
    from corral.sim.kv_transfer_sim import SimKVConnectorWorker

# Shared and never mutated: the scheduler only iterates over sampled token lists and slices
# draft lists. _PLACEHOLDERS[n] holds n placeholder tokens.
_PLACEHOLDERS = [[PLACEHOLDER_TOKEN_ID] * n for n in range(MAX_NUM_DRAFT_POSITIONS + 2)]
_PLACEHOLDER = _PLACEHOLDERS[1]
# Read-only empties for the ModelOutput fields a simulated step never fills.
_NO_LOGPROBS: MappingProxyType = MappingProxyType({})


class SimExecutor:
    """execute(SchedulerOutput) -> ModelOutput, like corral.model.executor.ModelExecutor.

    Follows each request it was told about (BatchShapeCounter); samples the placeholder token for
    each request whose chunk reaches its last token; the step time comes from the cost model and
    is returned in ModelOutput.step_time_s (virtual seconds).

    With speculation (corral/sim/spec.py): a request that verifies k drafts gets accepted + 1
    placeholder tokens, accepted drawn from the acceptance model with a seeded RNG; requests
    asked to propose get that many placeholder drafts, and the proposer's time is added to the
    step and reported as propose_time_s.

    With LoRA (corral/sim/lora_step.py): the step's adapter loads (its AdapterPlan) and the
    compute of its adapter tokens are added to the step time (the draft model, if any, runs
    without adapters).

    With constrained decoding (corral/sim/grammar_step.py): each sampled row of a constrained
    request adds its mask's fill and apply to the step time.

    With KV transfer (disaggregation, corral/sim/kv_transfer_sim.py): the step's ConnectorPlan
    goes to the connector's worker half first, and what it reports since the last step rides in
    ModelOutput.connector_events, as in the real executor; transfers add no step time.
    """

    def __init__(
        self,
        cost_model: CostModel,
        speculation: SpecSimConfig | None = None,
        seed: int = 0,
        lora: LoRAStepPricer | None = None,
        max_attended_tokens: int | None = None,
        grammar_mask: GrammarMaskPricer | None = None,
    ) -> None:
        self.cost_model = cost_model
        self.speculation = speculation
        self.lora = lora
        self.grammar_mask = grammar_mask
        # With a bounded attention window, its span caps the keys each query is priced for.
        self._counter = BatchShapeCounter(max_attended_tokens)
        self.last_batch: BatchShape | None = None
        self._rng = random.Random(seed)
        # Draft model: request id -> (verified tokens at its last proposal, k proposed then).
        self._draft_synced: dict[str, tuple[int, int]] = {}
        # Draft model: request id -> drafts accepted in its last verification since then.
        self._draft_accepted: dict[str, int] = {}
        # KV transfer's worker half (None: off; set by SimKVLinks.connect).
        self.connector: SimKVConnectorWorker | None = None

    @property
    def num_requests(self) -> int:
        return self._counter.num_requests

    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Advance every scheduled request's computed count and time the step."""
        connector = self.connector
        if connector is None:
            return self._execute(scheduler_output)
        connector.apply(scheduler_output.connector_plan)
        events = connector.poll()
        model_output = self._execute(scheduler_output)
        return replace(model_output, connector_events=events) if events else model_output

    def _execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        batch, sampled_ids = self._counter.count(scheduler_output)
        if scheduler_output.chunk_reuse is not None and batch is not None:  # RAG chunk reuse
            arch = getattr(self.cost_model, "arch", None)
            layers = arch.num_layers if arch is not None else DEFAULT_NUM_LAYERS
            batch = blended_shape(batch, scheduler_output.chunk_reuse, layers)
        added_s = self.lora.step_time_s(scheduler_output) if self.lora is not None else 0.0
        if self.grammar_mask is not None:
            added_s += self.grammar_mask.step_time_s(scheduler_output, sampled_ids)
        if self.speculation is not None:
            return self._execute_speculative(scheduler_output, batch, sampled_ids, added_s)
        sampled = dict.fromkeys(sampled_ids, _PLACEHOLDER)
        self.last_batch = batch
        if batch is None:
            return ModelOutput(sampled_token_ids=sampled)
        step_time_s = self.cost_model.step_time_s(batch)
        if added_s:
            step_time_s += added_s
        return ModelOutput(sampled, _NO_LOGPROBS, _NO_LOGPROBS, step_time_s, ())

    def num_accepted(self, num_drafts: int) -> int:
        """Draw how many of num_drafts drafts the target accepts (a run from the first)."""
        assert self.speculation is not None
        acceptance = self.speculation.acceptance_by_position
        random_ = self._rng.random
        accepted = 0
        while accepted < num_drafts and random_() < acceptance[accepted]:
            accepted += 1
        return accepted

    def _execute_speculative(
        self,
        scheduler_output: SchedulerOutput,
        batch: BatchShape | None,
        sampled_ids: list[str],
        added_s: float = 0.0,
    ) -> ModelOutput:
        speculation = self.speculation
        assert speculation is not None
        self.last_batch = batch
        sampled = dict.fromkeys(sampled_ids, _PLACEHOLDER)
        if speculation.is_draft_model:
            for request_id in scheduler_output.finished_request_ids:
                self._forget(request_id)
            for request_id in scheduler_output.preempted_request_ids:
                self._forget(request_id)
        if scheduler_output.spec_token_ids:
            accepted_by_id: dict[str, int] = {}
            for request_id, drafts in scheduler_output.spec_token_ids.items():
                accepted = self.num_accepted(len(drafts))
                accepted_by_id[request_id] = accepted
                sampled[request_id] = _PLACEHOLDERS[accepted + 1]
            self._counter.settle(accepted_by_id)
            if speculation.is_draft_model:
                self._draft_accepted.update(accepted_by_id)
        if batch is None:
            return ModelOutput(sampled_token_ids=sampled)
        step_time_s = self.cost_model.step_time_s(batch)
        if added_s:
            step_time_s += added_s
        proposals = {
            request_id: _PLACEHOLDERS[k]
            for request_id, k in scheduler_output.num_spec_tokens_to_propose.items()
            if k > 0 and request_id in sampled
        }
        if speculation.proposal_rate < 1.0 and proposals:
            random_, rate = self._rng.random, speculation.proposal_rate
            proposals = {rid: drafts for rid, drafts in proposals.items() if random_() < rate}
        propose_time_s, catchup_time_s = (
            self._propose_time_s(proposals) if proposals else (0.0, 0.0)
        )
        return ModelOutput(
            sampled,
            _NO_LOGPROBS,
            _NO_LOGPROBS,
            step_time_s + propose_time_s,
            (),
            spec_token_ids=proposals,
            propose_time_s=propose_time_s,
            # As the draft proposer times its catch-up (a first pass with a prompt-length
            # chunk); lookups do not: the controller prices a draft model as pass-based.
            catchup_time_s=catchup_time_s if speculation.is_draft_model else None,
        )

    def _forget(self, request_id: str) -> None:
        self._draft_synced.pop(request_id, None)
        self._draft_accepted.pop(request_id, None)

    def _propose_time_s(self, proposals: dict[str, list[int]]) -> tuple[float, float]:
        """The proposal's seconds, and of them the draft model's catch-up pass (0 without one)."""
        speculation = self.speculation
        assert speculation is not None
        num_proposed = sum(len(drafts) for drafts in proposals.values())
        time_s = speculation.propose_s_per_step + speculation.propose_s_per_token * num_proposed
        if not speculation.is_draft_model:
            return time_s, 0.0
        passes_s, catchup_s = self._draft_pass_times_s(proposals)
        return time_s + sum(passes_s), catchup_s

    def _draft_pass_times_s(self, proposals: dict[str, list[int]]) -> tuple[list[float], float]:
        """The draft model's passes' seconds, and its catch-up pass's (0 when its first pass
        catches up on no prompt-length chunk; timed as the engine's draft proposer times it).
        It catches up on the verified tokens it has not computed:
        all of them for a request it has not seen; else those past its last proposal, less the
        drafts it fed itself that were then accepted (it computed all but its last draft)."""
        speculation = self.speculation
        assert speculation is not None
        counter = self._counter
        synced = self._draft_synced
        requests = []
        for request_id, drafts in proposals.items():
            num_verified = counter.num_tokens_of(request_id)
            last = synced.get(request_id)
            if last is None:
                num_catch_up = num_verified
            else:
                accepted = self._draft_accepted.pop(request_id, 0)
                num_catch_up = num_verified - last[0] - min(accepted, last[1] - 1)
            k = len(drafts)
            synced[request_id] = (num_verified, k)
            requests.append((k, max(num_catch_up, 1), num_verified))
        model = speculation.draft_cost_model
        shapes = draft_pass_shapes(requests)
        if model is not None and speculation.draft_loop_s is not None:
            passes_s = draft_loop_pass_times_s(model, shapes, speculation.draft_loop_s)
        elif model is not None:
            passes_s = [model.step_time_s(shape) for shape in shapes]
        else:
            target = self.cost_model
            ratio = speculation.draft_cost_ratio
            passes_s = [ratio * target.step_time_s(shape) for shape in shapes]
        catchup_s = passes_s[0] if shapes and shapes[0].num_prefill_tokens else 0.0
        return passes_s, catchup_s
