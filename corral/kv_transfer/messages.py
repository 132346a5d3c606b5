"""What the scheduler half orders the worker half to do each step, and what the worker half
reports back (torch-free; they cross into the executor, possibly another process).

Ownership rule: the scheduler half holds references on every block a lease lends or a fetch
writes into, and drops them only when the worker half reports that lease released or that fetch
finished, so no block is reused while a socket reads or writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.core.block_hash import BlockHash
from corral.kv_transfer.params import RemotePrefill


@dataclass(frozen=True, slots=True)
class LeaseOrder:
    """Lend these device blocks (a finished prefill's full prompt blocks) under transfer_id."""

    transfer_id: str
    block_ids: list[int]
    block_hashes: list[BlockHash]


@dataclass(frozen=True, slots=True)
class FetchOrder:
    """Fetch the lease of params, from its block first_block on, into these device blocks;
    those lease blocks must carry block_hashes (the fetching engine's own hashes of the
    request's blocks, or the lender's for a prefetch)."""

    request_id: str
    params: RemotePrefill
    block_ids: list[int]
    block_hashes: list[BlockHash]
    first_block: int = 0


@dataclass(slots=True)
class ConnectorPlan:
    leases: list[LeaseOrder] = field(default_factory=list)
    expire: list[str] = field(default_factory=list)  # transfer ids whose lease timed out
    fetches: list[FetchOrder] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)  # request ids whose fetch is abandoned
    # Leases this engine will not fetch (no room, another layout): their lenders free them now
    # rather than at their timeout.
    declines: list[RemotePrefill] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.leases or self.expire or self.fetches or self.cancel or self.declines)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A fetch finished: ok means the blocks are in the device blocks of its order."""

    request_id: str
    ok: bool
    reason: str = ""  # why not ok (refused, corrupt, unreachable, cancelled, ...)
    num_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseReleased:
    """A lease's blocks are no longer read by anyone: reason acked, expired, refused, failed."""

    transfer_id: str
    reason: str


@dataclass(slots=True)
class ConnectorEvents:
    fetched: list[FetchResult] = field(default_factory=list)
    released: list[LeaseReleased] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.fetched or self.released)


@dataclass(slots=True)
class KVTransferStats:
    """Counters since start (the engine's metrics read them)."""

    num_leases: int = 0
    num_leases_acked: int = 0
    num_leases_expired: int = 0
    num_leases_failed: int = 0  # failed or refused sends
    num_fetches: int = 0
    num_fetches_ok: int = 0
    num_fetches_failed: int = 0  # then computed locally
    num_fetches_skipped: int = 0  # the lease could not be used: computed locally at once
    fetched_bytes: int = 0
    fetch_seconds: float = 0.0

    def copy(self) -> KVTransferStats:
        return KVTransferStats(*(getattr(self, name) for name in self.__slots__))  # type: ignore[attr-defined]
