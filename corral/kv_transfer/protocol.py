"""The two state machines of a KV transfer, shared by the worker half's threads (torch-free).

Prefill side, LeaseTable: a lease is OPEN when the scheduler half lends its blocks, SENDING
while one transfer-server thread reads them onto a socket, RELEASED once and for all: acked (the
decode engine confirmed a verified copy), failed (the send broke, or the peer refused the copy or
died before acking: it recomputes), refused (an unknown, busy or mismatched ask), or expired
(the scheduler half's timeout). An expiry during a send takes effect when the send ends, so the
blocks are never handed back while a thread reads them. One send per lease: a decode engine
that lost its copy recomputes rather than asking again.

Decode side, FetchTable: a fetch is RECEIVING while a thread pulls the bytes, RECEIVED once
they are verified and wait for the main thread to install them into device blocks, DONE after
exactly one FetchResult. A cancel (the request was aborted) during RECEIVING is reported when
the thread ends (its bytes are dropped, the device blocks never written); during RECEIVED it is
reported at once.

Both tables report in take_*() lists that the executor returns to the scheduler half, which only
then drops its block references.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any

from corral.core.block_hash import BlockHash
from corral.kv_transfer.messages import FetchResult, LeaseReleased

# How long an ask waits for a lease that the lender's next engine step opens.
LEASE_OPEN_WAIT_S = 5.0


class LeaseState(enum.Enum):
    OPEN = "open"
    SENDING = "sending"
    RELEASED = "released"


@dataclass(slots=True)
class Lease:
    transfer_id: str
    block_ids: list[int]
    block_hashes: list[BlockHash]
    state: LeaseState = LeaseState.OPEN
    expire_after_send: bool = False


class LeaseTable:
    """Prefill side (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened = threading.Condition(self._lock)
        self._leases: dict[str, Lease] = {}
        self._released: list[LeaseReleased] = []

    def open(self, transfer_id: str, block_ids: list[int], block_hashes: list[BlockHash]) -> None:
        with self._lock:
            if transfer_id in self._leases:
                raise ValueError(f"lease {transfer_id!r} is already open")
            self._leases[transfer_id] = Lease(transfer_id, list(block_ids), list(block_hashes))
            self._opened.notify_all()

    def begin_send(self, transfer_id: str, wait_s: float = 0.0) -> Lease | None:
        """The lease to send (now SENDING), or None when it is unknown, released or already
        being sent (the asker is refused). An unknown lease is waited for up to wait_s: the
        answer naming it can reach the decode engine before the next step opens it."""
        with self._lock:
            self._opened.wait_for(lambda: transfer_id in self._leases, timeout=wait_s)
            lease = self._leases.get(transfer_id)
            if lease is None or lease.state != LeaseState.OPEN:
                return None
            lease.state = LeaseState.SENDING
            return lease

    def end_send(self, transfer_id: str, reason: str) -> None:
        """The send ended (acked, or failed for reason): the lease is released."""
        with self._lock:
            lease = self._leases.get(transfer_id)
            if lease is None or lease.state != LeaseState.SENDING:
                raise RuntimeError(f"lease {transfer_id!r} is not being sent")
            self._release(lease, reason)

    def expire(self, transfer_id: str) -> None:
        """Time out: released now, or when its send ends. Unknown ids are ignored."""
        with self._lock:
            lease = self._leases.get(transfer_id)
            if lease is None:
                return
            if lease.state == LeaseState.OPEN:
                self._release(lease, "expired")
            elif lease.state == LeaseState.SENDING:
                lease.expire_after_send = True

    def take_released(self) -> list[LeaseReleased]:
        with self._lock:
            released, self._released = self._released, []
            return released

    def num_open(self) -> int:
        with self._lock:
            return len(self._leases)

    def _release(self, lease: Lease, reason: str) -> None:
        lease.state = LeaseState.RELEASED
        del self._leases[lease.transfer_id]
        self._released.append(LeaseReleased(lease.transfer_id, reason))


class FetchState(enum.Enum):
    RECEIVING = "receiving"
    RECEIVED = "received"
    DONE = "done"


@dataclass(slots=True)
class Fetch:
    request_id: str
    block_ids: list[int]
    state: FetchState = FetchState.RECEIVING
    cancelled: bool = False
    payload: Any = None  # the verified bytes while RECEIVED
    num_bytes: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Ready:
    request_id: str
    block_ids: list[int]
    payload: Any
    num_bytes: int
    seconds: float


class FetchTable:
    """Decode side (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fetches: dict[str, Fetch] = {}
        self._results: list[FetchResult] = []

    def start(self, request_id: str, block_ids: list[int]) -> None:
        with self._lock:
            if request_id in self._fetches:
                raise ValueError(f"a fetch for {request_id!r} is already running")
            self._fetches[request_id] = Fetch(request_id, list(block_ids))

    def deliver(
        self,
        request_id: str,
        payload: Any,
        reason: str = "",
        num_bytes: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """The receiving thread ended: payload (verified) or None with the reason."""
        with self._lock:
            fetch = self._fetches[request_id]
            if fetch.state != FetchState.RECEIVING:
                raise RuntimeError(f"fetch {request_id!r} delivered twice")
            if fetch.cancelled:
                self._finish(fetch, FetchResult(request_id, False, "cancelled"))
            elif payload is None:
                self._finish(fetch, FetchResult(request_id, False, reason or "failed"))
            else:
                fetch.state = FetchState.RECEIVED
                fetch.payload, fetch.num_bytes, fetch.seconds = payload, num_bytes, seconds

    def cancel(self, request_id: str) -> None:
        """Abandon a fetch (its request was aborted). Unknown ids are ignored."""
        with self._lock:
            fetch = self._fetches.get(request_id)
            if fetch is None:
                return
            if fetch.state == FetchState.RECEIVING:
                fetch.cancelled = True
            elif fetch.state == FetchState.RECEIVED:
                fetch.payload = None
                self._finish(fetch, FetchResult(request_id, False, "cancelled"))

    def take_ready(self) -> list[_Ready]:
        """Verified payloads to install now (main thread); each is then reported by
        installed()."""
        with self._lock:
            ready = []
            for fetch in list(self._fetches.values()):
                if fetch.state == FetchState.RECEIVED:
                    ready.append(_Ready(fetch.request_id, fetch.block_ids, fetch.payload,
                                        fetch.num_bytes, fetch.seconds))  # fmt: skip
                    fetch.payload = None
                    fetch.state = FetchState.DONE  # installing: no cancel can interleave
            return ready

    def installed(self, ready: _Ready, ok: bool, reason: str = "") -> None:
        with self._lock:
            fetch = self._fetches[ready.request_id]
            result = FetchResult(ready.request_id, ok, reason, ready.num_bytes, ready.seconds)
            self._finish(fetch, result)

    def take_results(self) -> list[FetchResult]:
        with self._lock:
            results, self._results = self._results, []
            return results

    def num_active(self) -> int:
        with self._lock:
            return len(self._fetches)

    def _finish(self, fetch: Fetch, result: FetchResult) -> None:
        fetch.state = FetchState.DONE
        del self._fetches[fetch.request_id]
        self._results.append(result)
