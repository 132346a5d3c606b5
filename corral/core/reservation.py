"""KV reservation at admission: how much memory a request must be able to get before it starts.

- none: on-demand paging (vLLM): admit whenever this step's blocks fit; preempt when a running
  request cannot grow.
- max: the worst case (Orca, FasterTransformer): admit only if prompt + max_tokens fit beside
  what the running requests may still claim up to their own max_tokens; no memory preemption.
- predicted: S3 (Jin et al., "S3: Increasing GPU Utilization during Generative Inference for
  Higher Throughput", 2023): reserve prompt + predicted output tokens * (1 + headroom); a request
  that outgrows its prediction allocates on demand (and may cause a preemption, as with none).

Chosen by SchedulerConfig.kv_reservation, a spec string like "predicted:headroom=0.2".
Counts are in blocks; shared prefix blocks are counted per holder (a conservative estimate).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from corral.core.kv_cache import KVCacheManager, cdiv
from corral.core.policies.options import build_from_spec
from corral.registry import Registry
from corral.request import Request


class AdmissionGate:
    """One step's admission check: spare blocks = free - what running requests still reserve."""

    def __init__(self, reservation: KVReservation, running: Sequence[Request], kv: KVCacheManager):
        self._reservation = reservation
        self._kv = kv
        self.num_spare_blocks = kv.num_free_blocks - sum(self._outstanding(r) for r in running)

    def _outstanding(self, request: Request) -> int:
        # Capped at the pool: a larger reservation could never be admitted (the request is
        # finished as "length" if it really grows that far).
        num_reserved = min(
            cdiv(self._reservation.reserved_tokens(request), self._kv.block_size),
            self._kv.num_blocks,
        )
        return max(num_reserved - self._kv.num_blocks_held(request.request_id), 0)

    def try_admit(self, request: Request) -> bool:
        """True (and the blocks are counted as taken) if the request's reservation fits."""
        needed = self._outstanding(request)
        if needed > self.num_spare_blocks:
            return False
        self.num_spare_blocks -= needed
        return True


class _OpenGate(AdmissionGate):
    def __init__(self) -> None:
        pass

    def try_admit(self, request: Request) -> bool:
        return True


_OPEN = _OpenGate()


class KVReservation(ABC):
    """How many tokens of KV a request reserves for its whole life."""

    @abstractmethod
    def reserved_tokens(self, request: Request) -> int: ...

    def gate(self, running: Sequence[Request], kv: KVCacheManager) -> AdmissionGate:
        """The admission check for one step (computed once: O(running))."""
        return AdmissionGate(self, running, kv)


KV_RESERVATIONS: Registry[KVReservation] = Registry("kv reservation")


@KV_RESERVATIONS.register("none")
class NoReservation(KVReservation):
    def reserved_tokens(self, request: Request) -> int:
        return request.num_tokens

    def gate(self, running: Sequence[Request], kv: KVCacheManager) -> AdmissionGate:
        return _OPEN


@KV_RESERVATIONS.register("max")
class MaxReservation(KVReservation):
    def reserved_tokens(self, request: Request) -> int:
        return request.num_prompt_tokens + request.max_tokens


@KV_RESERVATIONS.register("predicted")
class PredictedReservation(KVReservation):
    """Options: headroom (0.1): reserve predicted * (1 + headroom) output tokens. Requests
    without a prediction reserve their max_tokens."""

    def __init__(self, headroom: float = 0.1) -> None:
        if headroom < 0:
            raise ValueError(f"reservation headroom must be >= 0, got {headroom}")
        self.headroom = float(headroom)

    def reserved_tokens(self, request: Request) -> int:
        predicted = request.predicted_num_output_tokens
        if predicted is None:
            num_output = request.max_tokens
        else:
            num_output = min(math.ceil(predicted * (1 + self.headroom)), request.max_tokens)
        return max(request.num_prompt_tokens + num_output, request.num_tokens)


def make_reservation(spec: str) -> KVReservation:
    """Build the reservation a spec names ("none", "max", "predicted:headroom=0.2")."""
    return build_from_spec(KV_RESERVATIONS, spec)
