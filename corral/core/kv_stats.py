"""KVCacheStats: the counters of one KV cache manager, in one vocabulary. The manager owns the
object; its block pool and its lower tiers count into it. Block movements are named by their
direction: host saves (device -> host), host loads (host -> device), disk writes (host -> disk),
disk reads (disk -> host)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class KVCacheStats:
    # Prompt tokens looked up in the prefix cache at first admission, and those found (any tier).
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    # Cached device blocks whose hash was dropped to reuse the block.
    prefix_cache_evictions: int = 0
    host_saves: int = 0
    host_loads: int = 0
    disk_writes: int = 0
    disk_reads: int = 0
    failed_disk_reads: int = 0  # missing or corrupt files (recomputed instead)
    swap_outs: int = 0  # preempted requests whose blocks went to host memory
