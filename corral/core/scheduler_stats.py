"""SchedulerStats of a Scheduler now: queues, KV usage and every component's counters."""

from __future__ import annotations

from copy import copy
from typing import TYPE_CHECKING

from corral.core.messages import SchedulerStats

if TYPE_CHECKING:
    from corral.core.scheduler import Scheduler


def scheduler_stats(scheduler: Scheduler) -> SchedulerStats:
    kv = scheduler.kv.stats
    spec, adapters, connector = scheduler.spec, scheduler.adapters, scheduler.connector
    return SchedulerStats(
        num_running=len(scheduler.running),
        num_waiting=scheduler.num_waiting,
        kv_cache_usage=scheduler.kv.usage,
        num_preemptions=scheduler.num_preemptions,
        prefix_query_tokens=kv.prefix_query_tokens,
        prefix_hit_tokens=kv.prefix_hit_tokens,
        prefix_cache_evictions=kv.prefix_cache_evictions,
        kv_host_loads=kv.host_loads,
        kv_disk_reads=kv.disk_reads,
        kv_host_saves=kv.host_saves,
        kv_disk_writes=kv.disk_writes,
        kv_swap_outs=kv.swap_outs,
        spec_decode=spec.controller.stats.copy() if spec is not None else None,
        lora=adapters.stats() if adapters is not None else None,
        kv_transfer=connector.stats.copy() if connector is not None else None,
        session_pins=scheduler.pins.stats.copy() if scheduler.pins is not None else None,
        rag_chunks=copy(scheduler.rag.stats) if scheduler.rag is not None else None,
    )
