"""The SchedulerOutput of a planned step: what the executor computes, and what changed since."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.core.messages import SchedulerOutput
from corral.core.step_plan import StepPlan

if TYPE_CHECKING:
    from corral.core.scheduler import Scheduler


def build_scheduler_output(
    scheduler: Scheduler, step: StepPlan, to_propose: dict[str, int]
) -> SchedulerOutput:
    """The step's requests (new ones with their block tables, running ones with their new
    blocks), the ids finished since the last step, the preempted ids, and
    the plans of the KV tiers, adapters and KV connector."""
    spec, adapters, connector = scheduler.spec, scheduler.adapters, scheduler.connector
    trimmed = spec.trimmed_block_tables if spec is not None else {}
    new_requests = step.new_request_data(scheduler.kv.block_ids)
    cached_requests = step.cached_request_data(scheduler.requests, trimmed)
    # Taken: each finished id is reported once.
    finished_ids, scheduler._finished_ids = scheduler._finished_ids, set()
    return SchedulerOutput(
        new_requests=new_requests,
        cached_requests=cached_requests,
        num_scheduled_tokens=step.num_scheduled,
        total_num_scheduled_tokens=sum(step.num_scheduled.values()),
        finished_request_ids=finished_ids,
        preempted_request_ids={request.request_id for request in step.preempted},
        kv_transfers=scheduler.kv.take_transfer_plan(),
        spec_token_ids=step.spec_token_ids,
        num_spec_tokens_to_propose=to_propose,
        adapter_plan=adapters.take_plan() if adapters is not None else None,
        connector_plan=connector.take_plan() if connector is not None else None,
    )
