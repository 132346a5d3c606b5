"""Live migration, the source engine's side (Llumnix; docs/disaggregation.md#live-migration).

A running request leaves this engine between two steps: the KV connector lends its computed
full blocks (prompt and output) under a lease, the request finishes here with status
FINISHED_MIGRATED (finish reason "migrated"), and its last update carries a Resume: the tokens
it generated so far and the lease. The router hands that to another engine, which fetches the
blocks, computes the few tokens after the last full block, and goes on generating; its output
is the output this engine would have produced (greedy: token-identical), because the request's
tokens, sampling parameters and length limits are the same there.

A request may move when its client's router can continue it (Request.migratable), it is in its
decode phase, and its state lives entirely in its tokens: no logprobs (their history stays
here), no structured-output grammar, no seeded random sampling (the generator's position would
not move with it). Torch-free: the simulator runs it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from corral.core.block_hash import BlockHash
from corral.core.messages import RequestUpdate
from corral.kv_transfer.params import RemotePrefill, Resume
from corral.request import Request, RequestStatus

if TYPE_CHECKING:
    from corral.core.scheduler import Scheduler


def is_migratable(request: Request) -> bool:
    """Whether a request may move to another engine now (see the module docstring)."""
    params = request.sampling_params
    return (
        request.migratable
        and request.status == RequestStatus.RUNNING
        and request.num_output_tokens > 0
        and request.num_computed_tokens >= request.num_prompt_tokens
        and request.num_output_tokens < request.max_tokens
        and params.logprobs is None
        and params.prompt_logprobs is None
        and params.structured_output is None
        and request.grammar is None
        and (params.seed is None or params.temperature == 0)
    )


def choose_migrations(
    running: Iterable[Request],
    max_num_requests: int,
    request_ids: Iterable[str] = (),
    max_num_tokens: int | None = None,
) -> list[Request]:
    """The running requests to move: those named in request_ids that may move, else up to
    max_num_requests of the movable ones holding the most KV (each move frees the most
    memory) but at most max_num_tokens each (a rebalancing move larger than half the load gap
    would only turn the imbalance around)."""
    movable = [request for request in running if is_migratable(request)]
    wanted = set(request_ids)
    if wanted:
        return [request for request in movable if request.request_id in wanted]
    if max_num_tokens is not None:
        movable = [r for r in movable if r.num_computed_tokens <= max_num_tokens]
    movable.sort(key=lambda request: request.num_computed_tokens, reverse=True)
    return movable[: max(0, max_num_requests)]


def migrate_out(
    scheduler: Scheduler,
    max_num_requests: int,
    request_ids: Iterable[str] = (),
    max_num_tokens: int | None = None,
) -> list[RequestUpdate]:
    """Move requests out of the scheduler (see choose_migrations): lend their blocks when a
    KV connector lends, finish them as migrated, and return their last updates (a Resume
    each). Their blocks return to this pool when the lease is acked or expires."""
    updates = []
    chosen = choose_migrations(scheduler.running, max_num_requests, request_ids, max_num_tokens)
    for request in chosen:
        connector = scheduler.connector
        remote = connector.lend_running(request) if connector is not None else None
        resume = Resume(tuple(request.output_token_ids), remote)
        scheduler.finish_requests([request.request_id], RequestStatus.FINISHED_MIGRATED)
        updates.append(
            RequestUpdate(
                request.request_id,
                [],
                RequestStatus.FINISHED_MIGRATED.finish_reason,
                None,
                num_cached_tokens=request.num_cached_tokens,
                kv_transfer_params=resume,
            )
        )
    return updates


def pick_rebalance(
    kv_usages: Sequence[float],
    kv_usage_high: float,
    min_gap: float,
    num_waiting: Sequence[int] | None = None,
) -> tuple[int, int] | None:
    """Llumnix-style relief of memory pressure: (source, target) indices into kv_usages, the
    most loaded instance at or above kv_usage_high and the least loaded one at least min_gap
    below it; None when no move is due. With num_waiting (requests queued or preempted per
    instance), only a source with some waiting is under pressure (high usage alone is a well
    used pool) and only a target with none takes a request. The router and the simulator both
    decide with this; the request moved is the largest within rebalance_max_num_tokens."""
    indices = range(len(kv_usages))
    if num_waiting is not None:
        sources = [i for i in indices if num_waiting[i] > 0]
        targets = [i for i in indices if num_waiting[i] == 0]
    else:
        sources = targets = list(indices)
    if not sources or not targets:
        return None
    source = max(sources, key=kv_usages.__getitem__)
    target = min(targets, key=kv_usages.__getitem__)
    if source == target:
        return None
    if kv_usages[source] >= kv_usage_high and kv_usages[source] - kv_usages[target] >= min_gap:
        return source, target
    return None


def rebalance_max_num_tokens(source_usage: float, target_usage: float, capacity_tokens: int) -> int:
    """The largest request worth moving from source to target: half their KV load gap (of the
    source's capacity in tokens), so that the move narrows the gap instead of reversing it."""
    return max(0, int((source_usage - target_usage) / 2 * capacity_tokens))


def precopy(
    scheduler: Scheduler,
    max_num_requests: int,
    request_ids: Iterable[str] = (),
    max_num_tokens: int | None = None,
) -> list[tuple[str, RemotePrefill, list[BlockHash]]]:
    """Live migration's first stage: lend the chosen requests' computed full blocks while they
    keep running here (the engine they will move to prefetches them, so that the final stop
    copies only the blocks filled since). Returns (request id, lease, the blocks' hashes) per
    request that lent anything; nothing without a lending KV connector."""
    connector = scheduler.connector
    if connector is None:
        return []
    lent = []
    for request in choose_migrations(scheduler.running, max_num_requests, request_ids,
                                     max_num_tokens):  # fmt: skip
        remote = connector.lend_running(request)
        if remote is not None:
            hashes = scheduler.kv.request_block_hashes(request, remote.num_blocks)
            lent.append((request.request_id, remote, hashes))
    return lent
