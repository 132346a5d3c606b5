"""StepPlan: Scheduler.schedule()'s working state for one step (torch-free)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.core.messages import CachedRequestData, NewRequestData
from corral.request import Request


@dataclass(slots=True)
class StepPlan:
    """What one step will compute, built up by schedule(): the token budget left, the tokens
    per scheduled request, the new blocks of running requests, the requests admitted, and those
    preempted. A preempted request is taken out of the plan and its tokens go back to the
    budget."""

    budget: int
    num_scheduled: dict[str, int] = field(default_factory=dict)
    # Running requests scheduled this step -> blocks allocated to them this step.
    new_block_ids: dict[str, list[int]] = field(default_factory=dict)
    admitted: dict[str, Request] = field(default_factory=dict)
    preempted: list[Request] = field(default_factory=list)
    # Draft tokens scheduled for verification (speculative decoding), per request.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)

    def schedule_running(self, request: Request, num_tokens: int, block_ids: list[int]) -> None:
        self.num_scheduled[request.request_id] = num_tokens
        self.new_block_ids[request.request_id] = block_ids
        self.budget -= num_tokens

    def schedule_admitted(self, request: Request, num_tokens: int) -> None:
        self.num_scheduled[request.request_id] = num_tokens
        self.admitted[request.request_id] = request
        self.budget -= num_tokens

    def schedule_drafts(self, request: Request, drafts: list[int], block_ids: list[int]) -> None:
        """Append draft tokens to a request scheduled this step (after its real tokens)."""
        request_id = request.request_id
        self.num_scheduled[request_id] += len(drafts)
        self.spec_token_ids[request_id] = drafts
        if request_id in self.new_block_ids:
            self.new_block_ids[request_id].extend(block_ids)
        self.budget -= len(drafts)

    def unschedule(self, victim: Request) -> None:
        """Note a preemption: the victim leaves the plan, its tokens return to the budget."""
        self.preempted.append(victim)
        self.budget += self.num_scheduled.pop(victim.request_id, 0)
        self.new_block_ids.pop(victim.request_id, None)
        self.admitted.pop(victim.request_id, None)

    def new_request_data(self, block_ids_of: Callable[[str], list[int]]) -> list[NewRequestData]:
        """The admitted requests as the executor first sees them (block_ids_of: the KV
        manager's block table of a request)."""
        return [
            NewRequestData(
                request_id=request.request_id,
                token_ids=list(request.all_token_ids),
                num_prompt_tokens=request.num_prompt_tokens,
                sampling_params=request.sampling_params,
                block_ids=block_ids_of(request.request_id),
                num_computed_tokens=request.num_computed_tokens,
                eos_token_ids=request.eos_token_ids,
                adapter_id=request.adapter_id,
                grammar=request.grammar,
                lora_slot=request.lora_slot,
            )
            for request in self.admitted.values()
        ]

    def cached_request_data(
        self, requests: dict[str, Request], trimmed: dict[str, int]
    ) -> list[CachedRequestData]:
        """The running requests' changes (trimmed: block tables cut back by rejected drafts,
        consumed here)."""
        return [
            CachedRequestData(
                request_id=request_id,
                new_block_ids=block_ids,
                num_computed_tokens=requests[request_id].num_computed_tokens,
                num_kept_blocks=trimmed.pop(request_id, None) if trimmed else None,
            )
            for request_id, block_ids in self.new_block_ids.items()
        ]
