"""Scheduler.update(): the books after a step (torch-free): computed counts, sampled tokens,
stop checks, prefix-cache registration, and what changed per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.core.messages import ModelOutput, RequestUpdate, SchedulerOutput
from corral.core.stop import check_stop
from corral.request import RequestStatus

if TYPE_CHECKING:
    from corral.core.scheduler import Scheduler


def apply_model_output(
    scheduler: Scheduler, scheduler_output: SchedulerOutput, model_output: ModelOutput
) -> list[RequestUpdate]:
    """Advance scheduler's books after the executor ran scheduler_output (Scheduler.update)."""
    scheduler.kv.finish_disk_reads(model_output.finished_disk_reads)
    if scheduler.connector is not None:
        for fetched in scheduler.connector.update(model_output.connector_events):
            fetched.end_intervals(scheduler.clock())
            scheduler.policy.requeue_preempted(fetched)
    updates = [
        RequestUpdate(r.request_id, [], r.status.finish_reason, r.stop_reason,
                      num_cached_tokens=r.num_cached_tokens, intervals=r.intervals)
        for r in scheduler._outgrown
    ]  # fmt: skip
    scheduler._outgrown.clear()
    sampled = model_output.sampled_token_ids
    spec = scheduler.spec
    if spec is not None:
        spec.observe(scheduler_output, model_output)
    # With no draft verified or proposed this step, settling is plain bookkeeping.
    settles = spec is not None and bool(
        scheduler_output.spec_token_ids or model_output.spec_token_ids
    )
    for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
        request = scheduler.requests.get(request_id)
        if request is None or request.status != RequestStatus.RUNNING:
            continue  # finished or aborted while the step ran
        new_token_ids: list[int] = []
        failure = model_output.failed.get(request_id) if model_output.failed else None
        if failure is not None:
            request.status, request.stop_reason = RequestStatus.FINISHED_ERROR, failure
        for token_id in sampled.get(request_id, ()):
            request.append_output_token(token_id)
            new_token_ids.append(token_id)
            if check_stop(request, scheduler.max_model_len):
                break
        if not settles or spec is None:  # settles implies spec (told apart for mypy)
            request.num_computed_tokens += num_tokens
            if request.spec_token_ids:
                request.spec_token_ids = []  # the proposer made none for it
        else:
            drafts = scheduler_output.spec_token_ids.get(request_id, [])
            num_sampled = len(sampled.get(request_id, ()))
            spec.settle(request, num_tokens, drafts, num_sampled)
            spec.take_proposals(request, model_output)
        if scheduler.rag is None:
            scheduler.kv.cache_blocks(request)
        else:  # a blended request keeps its approximate blocks out of the prefix cache
            scheduler.rag.cache_blocks(request)
        if new_token_ids:
            scheduler.slo.on_token(request)
        prompt_logprobs = model_output.prompt_logprobs.get(request_id)
        if not new_token_ids and prompt_logprobs is None and failure is None:
            continue
        lease = None
        if request.is_finished and scheduler.connector is not None:
            lease = scheduler.connector.on_finished(request)  # before its blocks are freed
        logprobs = model_output.logprobs.get(request_id)
        if logprobs is not None:
            logprobs = logprobs[: len(new_token_ids)]
        updates.append(
            RequestUpdate(
                request_id,
                new_token_ids,
                request.status.finish_reason,
                request.stop_reason,
                logprobs,
                prompt_logprobs,
                request.num_cached_tokens,
                lease,
                request.num_preemptions,
                request.intervals if request.intervals and request.is_finished else None,
            )
        )
        if request.is_finished:
            scheduler.running.remove(request)
            scheduler.slo.on_finished(request, aborted=False)
            if scheduler.pins is not None:
                scheduler.pins.on_finished(request)  # before its blocks are freed
            scheduler._release(request)
    if scheduler.rag is not None:
        scheduler.rag.release_holds()
    return updates
