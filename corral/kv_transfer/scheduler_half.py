"""KVConnectorScheduler: the scheduler's half of KV transfer (torch-free; docs/disaggregation.md).

Prefill side: when a request that asked for remote decode (RemoteDecode) finishes normally, its
full prompt blocks are lent under a fresh transfer id: the connector adds its own reference to
them (KVCacheManager.hold_request_blocks) before the request frees its own, orders the worker
half to open the lease, and the request's last update carries the RemotePrefill the decode
engine needs. The reference is dropped only when the worker half reports the lease released
(acked, failed, refused, or expired after lease_timeout_s, which this half decides).

Decode side: a request that carries a RemotePrefill is parked when it arrives (Scheduler.
add_request): fresh blocks for the lease's blocks are held (allocate_held), the worker half fetches
into them, and the request waits outside the queue. A fetch that succeeds registers the blocks
in the prefix cache under the request's own block hashes and requeues the request, whose
admission then finds them as prefix hits (the hold is dropped once it is admitted); one that
fails (refused, corrupt, unreachable) frees them and requeues the request to compute its prompt
itself. Every request is fetched for at most once; one whose lease does not fit (another model
or layout, another block size, no free blocks) computes its prompt at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from corral.config import KVTransferConfig
from corral.core.kv_cache import KVCacheManager
from corral.kv_transfer.messages import (
    ConnectorEvents,
    ConnectorPlan,
    FetchOrder,
    KVTransferStats,
    LeaseOrder,
)
from corral.kv_transfer.params import RemoteDecode, RemotePrefill
from corral.request import Request, RequestStatus


def lease_holder(transfer_id: str) -> str:
    return f"lease:{transfer_id}"


def fetch_holder(request_id: str) -> str:
    return f"fetch:{request_id}"


def keep_holder(request_id: str) -> str:
    """A parked request's blocks already in the prefix cache, held while the rest arrive."""
    return f"keep:{request_id}"


class KVConnectorScheduler:
    """See the module docstring. endpoint and kv_identity: this engine's transfer server and
    its model/layout identity (what a decode engine's lease must match)."""

    def __init__(
        self,
        config: KVTransferConfig,
        kv: KVCacheManager,
        clock: Callable[[], float],
        *,
        endpoint: str,
        kv_identity: str,
    ) -> None:
        self.config = config
        self.kv = kv
        self.clock = clock
        self.endpoint = endpoint
        self.kv_identity = kv_identity
        self.stats = KVTransferStats()
        self._lease_deadlines: dict[str, float] = {}  # open leases, not yet ordered to expire
        self._num_leases_open = 0
        self._parked: dict[str, Request] = {}  # fetching
        self._first_blocks: dict[str, int] = {}  # parked request -> its first fetched block
        # Prefetches (live migration's pre-copy): fetch id -> the lender's block hashes, then
        # fetch id -> whether it succeeded (until asked).
        self._prefetching: dict[str, list] = {}
        self._prefetched: dict[str, bool] = {}
        self._fetched: set[str] = set()  # fetched blocks held until the request is admitted
        self._tried: set[str] = set()
        self._plan = ConnectorPlan()

    # ----- prefill side --------------------------------------------------------------------

    def on_finished(self, request: Request) -> RemotePrefill | None:
        """Lend a finished RemoteDecode request's full prompt blocks (call before the request
        frees its blocks); None when there is nothing to lend (aborted, errored, off, or a
        prompt shorter than one block)."""
        if not (self.config.lends and isinstance(request.kv_transfer, RemoteDecode)):
            return None
        if request.status in (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR):
            return None
        # A decode engine computes at least the prompt's last token (for its logits): the block
        # holding it would never be fetched.
        num_computed = min(request.num_prompt_tokens, request.num_computed_tokens)
        return self._lend(request, (num_computed - 1) // self.kv.block_size)

    def lend_running(self, request: Request) -> RemotePrefill | None:
        """Live migration: lend a running request's computed full blocks, prompt and output
        (call before the request frees its blocks); None when there is none or this engine
        does not lend. The engine it moves to computes at least its last token."""
        if not self.config.lends:
            return None
        num_computed = min(request.num_computed_tokens, request.num_tokens - 1)
        return self._lend(request, num_computed // self.kv.block_size)

    def _lend(self, request: Request, num_blocks: int) -> RemotePrefill | None:
        if num_blocks <= 0:
            return None
        transfer_id = f"{request.request_id}-{uuid.uuid4().hex[:12]}"
        block_ids = self.kv.hold_request_blocks(lease_holder(transfer_id), request, num_blocks)
        hashes = self.kv.request_block_hashes(request, num_blocks)
        self._plan.leases.append(LeaseOrder(transfer_id, block_ids, hashes))
        self._lease_deadlines[transfer_id] = self.clock() + self.config.lease_timeout_s
        self._num_leases_open += 1
        self.stats.num_leases += 1
        return RemotePrefill(
            transfer_id, self.endpoint, self.kv_identity, self.kv.block_size, num_blocks,
            self.config.transport,
        )  # fmt: skip

    # ----- decode side ---------------------------------------------------------------------

    def try_park(self, request: Request) -> bool:
        """Start fetching an arriving request's remote KV: True when it is parked (the caller
        queues it only when update() hands it back), False when it queues as usual (once per
        request: a lease it cannot use is declined)."""
        params = request.kv_transfer
        if not isinstance(params, RemotePrefill) or request.request_id in self._tried:
            return False
        self._tried.add(request.request_id)
        if not self.config.fetches:
            self._plan.declines.append(params)
            return False
        block_size = self.kv.block_size
        num_blocks = min(params.num_blocks, (request.num_tokens - 1) // block_size)
        fits = params.kv_identity == self.kv_identity and params.block_size == block_size
        # Fetched blocks are used as prefix hits: none without prefix caching or with prompt
        # logprobs (every prompt position is computed then).
        fits = fits and self.kv.enable_prefix_caching
        fits = fits and request.sampling_params.prompt_logprobs is None
        # A request of this id aborted while parked: its fetch still runs (a reused id).
        fits = fits and request.request_id not in self._parked
        # Blocks this engine's prefix cache holds already (a prefetch, an earlier turn) are not
        # fetched again; at least one is, so that the lease is acked and freed at once.
        first = 0
        if fits and num_blocks:
            keep = keep_holder(request.request_id)
            first = min(self.kv.hold_cached_prefix(keep, request, num_blocks), num_blocks - 1)
        holder = fetch_holder(request.request_id)
        num_fetched = num_blocks - first
        block_ids = self.kv.allocate_held(holder, num_fetched) if fits and num_blocks else None
        if block_ids is None:
            self.kv.release_held(keep_holder(request.request_id))
            self.stats.num_fetches_skipped += 1
            if request.request_id not in self._parked:  # (a reused id's lease stays its own)
                self._plan.declines.append(params)
            return False
        hashes = self.kv.request_block_hashes(request, num_blocks)[first:]
        order = FetchOrder(request.request_id, params, block_ids, hashes, first)
        self._plan.fetches.append(order)
        self._parked[request.request_id] = request
        self._first_blocks[request.request_id] = first
        self.stats.num_fetches += 1
        return True

    def is_parked(self, request: Request) -> bool:
        return request.request_id in self._parked

    def on_admitted(self, request: Request) -> None:
        """The request holds its prefix hits now: drop the fetch's own holds."""
        if request.request_id in self._fetched:
            self._fetched.discard(request.request_id)
            self.kv.release_held(fetch_holder(request.request_id))
            self.kv.release_held(keep_holder(request.request_id))

    def release_fetched(self) -> bool:
        """Let go of the blocks fetched for requests not admitted yet (they stay in the prefix
        cache, evictable): admission found no room, and those holds must not block it for good.
        True when anything was released."""
        released = bool(self._fetched)
        for request_id in self._fetched:
            self.kv.release_held(fetch_holder(request_id))
            self.kv.release_held(keep_holder(request_id))
        self._fetched.clear()
        return released

    def on_aborted(self, request: Request) -> None:
        """An aborted request: a running fetch is cancelled (its blocks stay held until the
        worker half reports it), fetched blocks are let go."""
        request_id = request.request_id
        if request_id in self._parked:
            self._plan.cancel.append(request_id)
        self.on_admitted(request)
        self._tried.discard(request_id)

    # ----- both ----------------------------------------------------------------------------

    def update(self, events: ConnectorEvents | None) -> list[Request]:
        """Apply the worker half's reports; returns the parked requests to queue again."""
        if not events:
            return []
        stats = self.stats
        for released in events.released:
            self.kv.release_held(lease_holder(released.transfer_id))
            self._lease_deadlines.pop(released.transfer_id, None)
            self._num_leases_open -= 1
            if released.reason == "acked":
                stats.num_leases_acked += 1
            elif released.reason == "expired":
                stats.num_leases_expired += 1
            else:
                stats.num_leases_failed += 1
        requeue = []
        for result in events.fetched:
            holder = fetch_holder(result.request_id)
            if result.request_id in self._prefetching:
                self._end_prefetch(result.request_id, result.ok, result.num_bytes, result.seconds)
                continue
            request = self._parked.pop(result.request_id, None)
            first = self._first_blocks.pop(result.request_id, 0)
            alive = request is not None and request.status == RequestStatus.WAITING
            if result.ok and alive:
                assert request is not None
                self.kv.register_held(holder, request, first)
                self._fetched.add(result.request_id)
                stats.num_fetches_ok += 1
                stats.fetched_bytes += result.num_bytes
                stats.fetch_seconds += result.seconds
            else:
                self.kv.release_held(holder)
                self.kv.release_held(keep_holder(result.request_id))
                if not result.ok:
                    stats.num_fetches_failed += 1
            if alive:
                assert request is not None
                requeue.append(request)
        return requeue

    def take_plan(self) -> ConnectorPlan | None:
        """This step's orders (leases past their deadline are ordered to expire)."""
        now = self.clock()
        expired = [tid for tid, deadline in self._lease_deadlines.items() if deadline <= now]
        for transfer_id in expired:
            del self._lease_deadlines[transfer_id]
            self._plan.expire.append(transfer_id)
        if not self._plan:
            return None
        plan, self._plan = self._plan, ConnectorPlan()
        return plan

    def is_lending(self, transfer_id: str) -> bool:
        """The lease is lent and not yet released or ordered to expire."""
        return transfer_id in self._lease_deadlines

    def has_pending(self) -> bool:
        """Leases open or fetches running: the engine loop keeps stepping to hear of them."""
        return bool(self._num_leases_open or self._parked or self._prefetching)

    # ----- live migration's pre-copy ---------------------------------------------------------

    def prefetch(self, params: RemotePrefill, block_hashes: list) -> str | None:
        """Fetch a lease into this engine's prefix cache under the lender's block hashes,
        before any request here needs it (the request it belongs to is still running at the
        lender). Returns the fetch id to poll with prefetch_result, None when it cannot run
        (this engine does not fetch, another model or layout, no free blocks)."""
        fits = self.config.fetches and self.kv.enable_prefix_caching
        fits = fits and params.kv_identity == self.kv_identity
        fits = fits and params.block_size == self.kv.block_size
        fetch_id = f"prefetch:{params.transfer_id}"
        num_blocks = min(params.num_blocks, len(block_hashes))
        if not fits or num_blocks < 1 or fetch_id in self._prefetching:
            return None
        block_ids = self.kv.allocate_held(fetch_holder(fetch_id), num_blocks)
        if block_ids is None:
            self.stats.num_fetches_skipped += 1
            self._plan.declines.append(params)
            return None
        hashes = list(block_hashes[:num_blocks])
        self._plan.fetches.append(FetchOrder(fetch_id, params, block_ids, hashes))
        self._prefetching[fetch_id] = hashes
        self.stats.num_fetches += 1
        return fetch_id

    def prefetch_result(self, fetch_id: str) -> bool | None:
        """True or False once the prefetch ended (then forgotten), None while it runs."""
        if fetch_id in self._prefetching:
            return None
        return self._prefetched.pop(fetch_id, False)

    def _end_prefetch(self, fetch_id: str, ok: bool, num_bytes: int, seconds: float) -> None:
        holder = fetch_holder(fetch_id)
        hashes = self._prefetching.pop(fetch_id)
        if ok:
            self.kv.register_held_hashes(holder, hashes)  # cached, evictable once let go
            self.stats.num_fetches_ok += 1
            self.stats.fetched_bytes += num_bytes
            self.stats.fetch_seconds += seconds
        else:
            self.stats.num_fetches_failed += 1
        self.kv.release_held(holder)
        self._prefetched[fetch_id] = ok

    def forget(self, request: Request) -> None:
        """The request left the scheduler (finished): its fetch bookkeeping goes."""
        self._tried.discard(request.request_id)
