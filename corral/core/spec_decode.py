"""The scheduler's half of speculative decoding (torch-free).

Each step, after the ordinary plan is made, every request that samples this step is a candidate:
the controller (corral/spec/controller.py) grants it K draft tokens. The request verifies up to K
of the drafts it holds (proposed after its last step) and the executor proposes K new ones after
verifying. Draft tokens are more tokens to compute: they take budget and KV slots. After the step,
num_computed_tokens is rolled back past the rejected drafts and blocks holding only rejected
tokens go back to the pool; a block is registered in the prefix cache only once all its tokens
are verified (cache_blocks looks at computed, verified tokens only).
"""

from __future__ import annotations

import time

from corral.config import SpeculativeConfig
from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS
from corral.core.kv_cache import KVCacheManager
from corral.core.messages import ModelOutput, SchedulerOutput
from corral.core.step_plan import StepPlan
from corral.request import Request
from corral.spec.controller import Candidate, SpecController
from corral.spec.step_cost import split_step

# Of the steps for which the controller held an empty plan, one in this many is observed.
IDLE_OBSERVE_INTERVAL = 4


class SpecDecodeScheduling:
    """Adds draft tokens to a step plan and settles them after the step."""

    def __init__(
        self,
        config: SpeculativeConfig,
        kv: KVCacheManager,
        max_model_len: int,
        capacity_tokens: int,
    ) -> None:
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.capacity_tokens = capacity_tokens
        self.controller = SpecController(
            config.num_speculative_tokens, config.num_tokens_rule, config.runs_in_passes
        )
        # Requests whose block tables were cut since the executor last heard of them -> length.
        self.trimmed_block_tables: dict[str, int] = {}
        # Request id -> its num_tokens when it was last asked to propose (what the proposer has
        # seen of it; dropped when it finishes or is preempted, as the proposer's state is).
        self._proposed_upto: dict[str, int] = {}
        # The requests of the step last planned (the controller may hold an empty plan for it).
        self._planned_batch: frozenset[str] = frozenset()
        # Steps the controller held an empty plan for (hold_idle) since one was observed: of
        # those, one in IDLE_OBSERVE_INTERVAL is observed (they show the same thing, and an
        # observation was 9-10 us of a 1.4 ms step at 32).
        self._num_idle_unobserved = 0
        self._held_idle = False
        # Wall-clock seconds the last add_drafts spent choosing (building candidates, the
        # controller's plan): the engine takes them out of the step time the fit sees.
        self.plan_time_s = 0.0

    def add_drafts(self, step: StepPlan, requests: dict[str, Request]) -> dict[str, int]:
        """Schedule draft tokens into the step; returns how many tokens to propose next, per
        request that samples this step."""
        start = time.perf_counter()
        self.plan_time_s = 0.0
        batch = frozenset(step.num_scheduled)
        # The batch planned, or what is left of it (requests finish one by one at 32).
        self._held_idle = batch <= self._planned_batch and self.controller.hold_idle()
        if self._held_idle:
            return {}
        # Set again once the controller plans this batch: the hold belongs to the batch whose
        # plan was empty, and a step without candidates (prefill chunks only) plans nothing.
        self._planned_batch = frozenset()
        candidates: dict[str, Candidate] = {}
        for request_id, num_tokens in step.num_scheduled.items():
            request = requests[request_id]
            end = request.num_computed_tokens + num_tokens
            if end != request.num_tokens:
                continue  # a prefill chunk: nothing is sampled, nothing to verify
            # Drafts proposed now are verified next step, as 1 + k decode rows; those held are
            # verified in this chunk, which must stay within decode rows with them.
            max_k = min(
                self.config.num_speculative_tokens,
                MAX_DECODE_ROW_TOKENS - 1,
                request.max_tokens - request.num_output_tokens - 1,
                self.max_model_len - request.num_tokens - 1,
                self.capacity_tokens - end,
            )
            num_verifiable = min(len(request.spec_token_ids), MAX_DECODE_ROW_TOKENS - num_tokens)
            behind = request.num_tokens - self._proposed_upto.get(request_id, 0)
            candidates[request_id] = Candidate(
                max(num_verifiable, 0),
                max(max_k, 0),
                behind,
                request.max_tokens - request.num_output_tokens,
            )
        if not candidates:
            return {}
        num_row_tokens, num_prefill_tokens, num_row_requests = split_step(
            (num_tokens, 0) for num_tokens in step.num_scheduled.values()
        )
        self._planned_batch = batch
        plan = self.controller.plan(
            candidates,
            num_row_tokens,
            num_prefill_tokens,
            step.budget,
            len(step.num_scheduled),
            num_row_requests,
        )
        self.plan_time_s = time.perf_counter() - start
        for request_id, k in plan.verify.items():
            request = requests[request_id]
            drafts = request.spec_token_ids[:k]
            if not drafts or step.budget < len(drafts):
                continue
            num_tokens = step.num_scheduled[request_id] + len(drafts)
            block_ids = self.kv.allocate_slots(request, num_tokens)
            if block_ids is None:
                continue  # no room: verify nothing, never preempt for a guess
            step.schedule_drafts(request, drafts, block_ids)
        for request_id in plan.propose:
            # The proposer syncs to the tokens this step verifies (about one more than now).
            self._proposed_upto[request_id] = requests[request_id].num_tokens
        return plan.propose

    def settle(
        self, request: Request, num_scheduled: int, drafts: list[int], num_sampled: int
    ) -> None:
        """After the step: num_sampled tokens were appended (accepted drafts, then the target's
        own, cut short where a stop condition hit). Roll back past the rejected drafts."""
        num_accepted = max(num_sampled - 1, 0)
        if num_sampled and drafts:
            self.controller.record(request.request_id, len(drafts), num_accepted)
        num_rejected = len(drafts) - min(num_accepted, len(drafts))
        request.num_computed_tokens = min(
            request.num_computed_tokens + num_scheduled - num_rejected, request.num_tokens
        )
        if num_rejected and self.kv.free_excess_blocks(request, request.num_tokens):
            self.trimmed_block_tables[request.request_id] = self.kv.num_blocks_held(
                request.request_id
            )

    def take_proposals(self, request: Request, model_output: ModelOutput) -> None:
        request.spec_token_ids = model_output.spec_token_ids.get(request.request_id, [])

    def observe(self, scheduler_output: SchedulerOutput, model_output: ModelOutput) -> None:
        """Learn the step's cost (wall-clock in the engine, virtual in the simulator); the fixed
        rule prices nothing, and skips it (about 25 us a single-request step)."""
        if self.controller.rule == "fixed":
            return
        if self._held_idle and not model_output.spec_token_ids:
            self._num_idle_unobserved += 1
            if self._num_idle_unobserved < IDLE_OBSERVE_INTERVAL:
                return
        self._num_idle_unobserved = 0
        drafts = scheduler_output.spec_token_ids
        chunks = scheduler_output.num_scheduled_tokens
        if scheduler_output.total_num_scheduled_tokens == len(chunks):
            # One token a request: a decode step without drafts (the common case, told apart
            # without a pass over the batch).
            num_row_tokens, num_prefill_tokens, num_row_requests = len(chunks), 0, len(chunks)
        else:
            num_row_tokens, num_prefill_tokens, num_row_requests = split_step(
                (num_tokens, len(drafts.get(request_id, ())))
                for request_id, num_tokens in chunks.items()
            )
        self.controller.observe_step(
            num_row_tokens,
            num_prefill_tokens,
            model_output.step_time_s,
            model_output.propose_time_s,
            sum(len(ids) for ids in model_output.spec_token_ids.values()),
            model_output.catchup_time_s,
            sum(1 for ids in drafts.values() if ids) if drafts else 0,
            len(chunks),
            num_row_requests,
        )

    def forget(self, request: Request) -> None:
        """The request finished or was preempted (the executor drops its block table)."""
        request.spec_token_ids = []
        self.trimmed_block_tables.pop(request.request_id, None)
        self._proposed_upto.pop(request.request_id, None)
        if request.is_finished:
            self.controller.forget(request.request_id)
