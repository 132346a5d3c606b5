"""Preemption modes, registered by name: what happens to a victim's KV when blocks run out."""

from __future__ import annotations

from abc import ABC, abstractmethod

from corral.core.kv_cache import KVCacheManager
from corral.registry import Registry
from corral.request import Request


class PreemptionMode(ABC):
    @abstractmethod
    def preempt(self, kv: KVCacheManager, request: Request) -> str:
        """Take the request's blocks away; afterwards it holds none on the device. Returns how:
        "recompute" (its KV is dropped) or "swap" (copied to the host tier)."""


PREEMPTION_MODES: Registry[PreemptionMode] = Registry("preemption mode")


@PREEMPTION_MODES.register("recompute")
class RecomputePreemption(PreemptionMode):
    """Drop the KV and recompute it on resumption (its prefix may still hit the cache)."""

    def preempt(self, kv: KVCacheManager, request: Request) -> str:
        kv.free(request)
        request.num_computed_tokens = 0
        return "recompute"


@PREEMPTION_MODES.register("swap")
class SwapPreemption(PreemptionMode):
    """Copy the KV to the host tier and back on resumption (vLLM v0 swapping); falls back to
    recompute when the host tier has no room (EngineConfig refuses swap without a host tier)."""

    def preempt(self, kv: KVCacheManager, request: Request) -> str:
        if kv.swap_out(request):
            return "swap"
        return RecomputePreemption().preempt(kv, request)
