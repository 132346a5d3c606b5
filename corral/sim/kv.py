"""SimKVCacheManager: the real KVCacheManager plus KV that arrives from another instance.

With prefill/decode disaggregation, a decode instance receives a request whose prompt KV was
computed elsewhere and copied over. `expect_external(request_id, num_tokens)` makes the next
match_prefix of that request cover its first num_tokens tokens: cached blocks where this
instance has them, fresh blocks for the rest (the transferred KV). The scheduler then admits it
exactly like a prefix-cache hit, allocating those blocks; after that the request is ordinary (a
preemption drops the KV and the request is recomputed locally).
"""

from __future__ import annotations

from corral.core.kv_cache import KVCacheManager, PrefixMatch, cdiv
from corral.request import Request


class SimKVCacheManager(KVCacheManager):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._external: dict[str, int] = {}
        # Tokens admitted as external KV, counted by the scheduler as prefix hits too.
        self.num_external_tokens = 0

    def expect_external(self, request_id: str, num_tokens: int) -> None:
        """The request's first num_tokens tokens arrive with their KV (before it is added)."""
        self._external[request_id] = num_tokens

    def match_prefix(self, request: Request) -> PrefixMatch:
        num_external = self._external.get(request.request_id)
        match = super().match_prefix(request)
        if num_external is None or num_external <= match.num_tokens:
            return match
        num_needed = cdiv(num_external, self.block_size) - len(match.blocks)
        if num_needed > self.pool.num_free_blocks - self.pool.evictable_count(match.blocks):
            return match  # no room now; the scheduler waits and asks again
        # Fresh blocks, handed back at once so they sit unreferenced at the free queue's tail:
        # allocate_slots then takes them like evictable prefix hits. The cached hits are held
        # meanwhile so that the allocation cannot evict them.
        self.pool.touch(match.blocks)
        fresh = self.pool.allocate(num_needed)
        self.pool.release(reversed(fresh))
        self.pool.release(reversed(match.blocks))
        return PrefixMatch(match.blocks + fresh, num_external)

    def on_admitted(self, request_id: str) -> None:
        """The scheduler admitted the request: its transferred KV is now in its blocks."""
        num_external = self._external.pop(request_id, None)
        if num_external is not None:
            self.num_external_tokens += num_external

    @property
    def has_pending_external(self) -> bool:
        return bool(self._external)
