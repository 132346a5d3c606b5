"""What the dashboard shows of one scheduler (torch-free): its requests in policy order with
their state and progress, and the KV block map. Built on demand (a utility call, at most every
--dashboard-interval-ms while a dashboard page is open), never on the step path; the simulator
builds the same snapshot of each of its instances.

Block map cells: KV_FREE (no data), KV_CACHED (unreferenced, holding a prefix-cache entry:
evictable), KV_HELD (outside every request: KV-transfer leases and fetch targets, session pins),
KV_SHARED
(in use by more than one request: a shared prefix), or KV_OWNED + g: in use by one request of
owner group g (its LoRA adapter, else its tenant, else "default"). A pool of more blocks than
max_num_cells is shown max_num_cells cells wide, each cell the most common state of its blocks.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from corral.request import Request, RequestStatus

if TYPE_CHECKING:
    from corral.core.scheduler import Scheduler

KV_FREE, KV_CACHED, KV_HELD, KV_SHARED, KV_OWNED = 0, 1, 2, 3, 4
DEFAULT_OWNER = "default"
MAX_NUM_REQUESTS = 64
MAX_NUM_CELLS = 2048


def owner_of(request: Request) -> str:
    """The group a request's blocks are shown under: its adapter, else its tenant."""
    if request.adapter_id is not None:
        return f"adapter:{request.adapter_id}"
    if request.client_id:
        return f"tenant:{request.client_id}"
    return DEFAULT_OWNER


def request_state(scheduler: Scheduler, request: Request) -> str:
    """prefill | decode (running), waiting | preempted | swapped (not running)."""
    if request.status == RequestStatus.RUNNING:
        return "prefill" if request.num_computed_tokens < request.num_prompt_tokens else "decode"
    if scheduler.kv.is_swapped(request):
        return "swapped"
    return "preempted" if request.num_preemptions > 0 else "waiting"


def _request_row(scheduler: Scheduler, request: Request, rank: int, now: float) -> dict:
    return {
        "id": request.request_id,
        "rank": rank,
        "state": request_state(scheduler, request),
        "owner": owner_of(request),
        "num_prompt_tokens": request.num_prompt_tokens,
        "num_computed_tokens": request.num_computed_tokens,
        "num_output_tokens": request.num_tokens - request.num_prompt_tokens,
        "max_tokens": request.max_tokens,
        "num_blocks": scheduler.kv.num_blocks_held(request.request_id),
        "num_preemptions": request.num_preemptions,
        "age_s": round(max(0.0, now - request.arrival_time), 3),
        "priority": request.priority,
    }


def requests_snapshot(scheduler: Scheduler, max_num: int = MAX_NUM_REQUESTS) -> dict[str, Any]:
    """The running requests in the order they get this step's budget, then the waiting ones in
    the order the policy would admit them (arrival order where it keeps none: waiting_order
    says which); at most max_num of each."""
    now = scheduler.clock()
    running = list(scheduler.policy.order_running(scheduler.running, now))[:max_num]
    waiting = scheduler.policy.waiting_in_order(max_num)
    waiting_order = "policy"
    if waiting is None:
        waiting_order = "arrival"
        running_ids = {r.request_id for r in scheduler.running}
        candidates = [
            r
            for r in scheduler.requests.values()
            if r.request_id not in running_ids and not r.status.is_finished
        ]
        waiting = sorted(candidates, key=lambda r: r.arrival_time)[:max_num]
    return {
        "policy": type(scheduler.policy).__name__,
        "waiting_order": waiting_order,
        "num_running": len(scheduler.running),
        "num_waiting": scheduler.num_waiting,
        "running": [_request_row(scheduler, r, i, now) for i, r in enumerate(running)],
        "waiting": [_request_row(scheduler, r, i, now) for i, r in enumerate(waiting)],
    }


def kv_snapshot(scheduler: Scheduler, max_num_cells: int = MAX_NUM_CELLS) -> dict[str, Any]:
    """The block map (see the module docstring), per-state counts, and the lower tiers."""
    kv = scheduler.kv
    pool = kv.pool
    states = [KV_CACHED if b.block_hash is not None else KV_FREE for b in pool.blocks]
    for block in pool.blocks:
        if block.ref_count > 1:
            states[block.block_id] = KV_SHARED
        elif block.ref_count == 1:
            states[block.block_id] = KV_HELD  # a request's block is set to its owner below
    owners: list[str] = []
    owner_index: dict[str, int] = {}
    for request_id in kv.request_ids():
        request = scheduler.requests.get(request_id)
        owner = owner_of(request) if request is not None else DEFAULT_OWNER
        index = owner_index.setdefault(owner, len(owners))
        if index == len(owners):
            owners.append(owner)
        for block_id in kv.block_ids(request_id):
            if states[block_id] == KV_HELD:
                states[block_id] = KV_OWNED + index
    counts = Counter(states)
    snapshot: dict[str, Any] = {
        "num_blocks": pool.num_blocks,
        "block_size": kv.block_size,
        "owners": owners,
        "num_free": counts[KV_FREE],
        "num_cached": counts[KV_CACHED],
        "num_held": counts[KV_HELD],
        "num_shared": counts[KV_SHARED],
        "num_owned": {owner: counts[KV_OWNED + i] for i, owner in enumerate(owners)},
        "blocks_per_cell": 1,
        "cells": states,
        "tiers": [],
    }
    if len(states) > max_num_cells:
        per_cell = -(-len(states) // max_num_cells)
        snapshot["blocks_per_cell"] = per_cell
        snapshot["cells"] = [
            Counter(states[i : i + per_cell]).most_common(1)[0][0]
            for i in range(0, len(states), per_cell)
        ]
    offloader = kv.offloader
    if offloader is not None:
        host = offloader.host
        snapshot["tiers"].append(
            {
                "name": "host",
                "num_blocks": host.num_slots,
                "num_used": host.num_slots - host.num_free_slots,
            }
        )
        if offloader.disk is not None:
            disk = offloader.disk
            snapshot["tiers"].append(
                {"name": "disk", "num_blocks": disk.max_blocks, "num_used": disk.num_blocks}
            )
    return snapshot


def scheduler_snapshot(
    scheduler: Scheduler,
    max_num_requests: int = MAX_NUM_REQUESTS,
    max_num_cells: int = MAX_NUM_CELLS,
) -> dict[str, Any]:
    """Requests and KV map of one scheduler, as plain JSON-ready values."""
    return {
        "requests": requests_snapshot(scheduler, max_num_requests),
        "kv": kv_snapshot(scheduler, max_num_cells),
    }
