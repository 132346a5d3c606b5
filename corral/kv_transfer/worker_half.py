"""KVConnectorWorker: the worker's half of KV transfer, in the engine core process (torch).

It obeys the scheduler half's ConnectorPlan each step and reports ConnectorEvents back
(corral.kv_transfer.protocol holds the state machines; corral.kv_transfer.wire the bytes).

- Lending (prefill): a transfer server thread accepts decode engines' connections; each ASK is
  served from the lease's device blocks (KVStorage.read_blocks, a copy taken while the blocks
  are referenced by the lease, so nobody writes them) with a CRC-32 of the payload, inline on
  the socket (tcp) or in a shared-memory segment (shm, one machine). The lease is released when
  the ACK arrives, or as failed when the connection ends without one.
- Fetching (decode): one thread per fetch connects, asks, receives, verifies the identity and
  the checksum, acks, and leaves the bytes to the main thread, which writes them into the
  fetch's device blocks in poll() (between steps, never during a forward pass).

Fault injection for tests (env CORRAL_KV_TRANSFER_FAULT, read by the lending side):
`corrupt` flips one payload byte after the checksum is taken; `refuse` refuses every ASK (as
a lease of another model would be).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import zlib
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from corral.config import KVTransferConfig
from corral.kv_transfer.messages import ConnectorEvents, ConnectorPlan, FetchOrder
from corral.kv_transfer.params import endpoint_address
from corral.kv_transfer.protocol import LEASE_OPEN_WAIT_S, FetchTable, LeaseTable
from corral.kv_transfer.wire import encode_hash, recv_exactly, recv_frame, send_frame
from corral.model.kv_storage import KVStorage

logger = logging.getLogger(__name__)

FAULT_ENV = "CORRAL_KV_TRANSFER_FAULT"
CONNECT_TIMEOUT_S = 5.0
IO_TIMEOUT_S = 60.0


class KVConnectorWorker:
    """See the module docstring. Start the server (lending side) with start()."""

    def __init__(self, storage: KVStorage, config: KVTransferConfig, kv_identity: str) -> None:
        self.storage = storage
        self.config = config
        self.kv_identity = kv_identity
        self.leases = LeaseTable()
        self.fetches = FetchTable()
        self.fault = os.environ.get(FAULT_ENV, "")
        self._server: socket.socket | None = None
        self._closed = threading.Event()
        self.endpoint = ""
        if config.lends:
            self._server = socket.create_server((config.host, config.port), backlog=64)
            port = self._server.getsockname()[1]
            host = config.host
            if host in ("", "0.0.0.0", "::"):  # listening everywhere: advertise this machine
                host = socket.gethostbyname(socket.gethostname())
            self.endpoint = f"tcp://{host}:{port}"
            threading.Thread(target=self._serve, name="corral-kv-server", daemon=True).start()

    # ----- the step ------------------------------------------------------------------------

    def apply(self, plan: ConnectorPlan | None) -> None:
        """Open and expire leases, start and cancel fetches."""
        if not plan:
            return
        for lease in plan.leases:
            self.leases.open(lease.transfer_id, lease.block_ids, lease.block_hashes)
        for transfer_id in plan.expire:
            self.leases.expire(transfer_id)
        for order in plan.fetches:
            self.fetches.start(order.request_id, order.block_ids)
            name = f"corral-kv-fetch-{order.request_id}"
            threading.Thread(target=self._fetch, args=(order,), name=name, daemon=True).start()
        for request_id in plan.cancel:
            self.fetches.cancel(request_id)
        for params in plan.declines:
            threading.Thread(target=self._decline, args=(params,), daemon=True).start()

    def poll(self) -> ConnectorEvents | None:
        """Install fetched blocks (main thread), then report what finished."""
        for ready in self.fetches.take_ready():
            try:
                self.storage.write_blocks(ready.block_ids, ready.payload)
            except Exception as error:  # a layout mismatch the identity check missed
                logger.warning("fetched KV for %s not installed: %s", ready.request_id, error)
                self.fetches.installed(ready, False, f"install failed: {error}")
            else:
                self.fetches.installed(ready, True)
        events = ConnectorEvents(self.fetches.take_results(), self.leases.take_released())
        return events or None

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.close()

    # ----- lending ---------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._lend, args=(conn,), daemon=True).start()

    def _lend(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT_S)
            try:
                ask = recv_frame(conn)
            except (OSError, ValueError) as error:
                logger.debug("a KV transfer connection ended before its ask: %s", error)
                return
            transfer_id = str(ask.get("transfer_id"))
            lease = self.leases.begin_send(transfer_id, LEASE_OPEN_WAIT_S)
            if lease is not None and ask.get("decline") is True:  # the fetcher will not fetch
                self.leases.end_send(transfer_id, "refused")
                return
            if lease is None:
                with contextlib.suppress(OSError):
                    send_frame(conn, {"status": "refused", "reason": "no such open lease"})
                return
            self.leases.end_send(transfer_id, self._send_lease(conn, ask, lease))

    def _send_lease(self, conn: socket.socket, ask: dict[str, Any], lease: Any) -> str:
        """Send one lease; returns the release reason (acked, refused, failed)."""
        asked = ask.get("block_hashes")
        num_blocks = len(asked) if isinstance(asked, list) else 0
        first = ask.get("first_block", 0)
        first = first if isinstance(first, int) and first >= 0 else -1
        end = first + num_blocks
        expected = [encode_hash(h) for h in lease.block_hashes[first:end]] if first >= 0 else []
        problem = None
        if self.fault == "refuse":
            problem = "refused by fault injection"
        elif ask.get("kv_identity") != self.kv_identity:
            problem = "another model, tokenizer or KV layout"
        elif not (num_blocks > 0 and first >= 0 and end <= len(lease.block_ids)) or (
            asked != expected
        ):
            problem = "the blocks hold other tokens"
        if problem is not None:
            with contextlib.suppress(OSError):
                send_frame(conn, {"status": "refused", "reason": problem})
            return "refused"
        segment = None
        try:
            # The fetcher may take fewer blocks: those its prefix cache holds (the first ones)
            # and those after the last full block before its last token (it computes that).
            payload = self.storage.read_blocks(lease.block_ids[first:end])
            header: dict[str, Any] = {
                "status": "ok", "num_bytes": len(payload), "crc32": zlib.crc32(payload),
            }  # fmt: skip
            if self.fault == "corrupt":
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            if ask.get("transport") == "shm":
                segment = shared_memory.SharedMemory(create=True, size=max(1, len(payload)))
                segment.buf[: len(payload)] = payload  # type: ignore[index]
                header["shm_name"] = segment.name
                send_frame(conn, header)
            else:
                send_frame(conn, header)
                conn.sendall(payload)
            ack = recv_frame(conn)
            return "acked" if ack.get("ack") is True else "failed"
        except (OSError, ValueError) as error:
            logger.info("KV lease %s not delivered: %s", lease.transfer_id, error)
            return "failed"
        finally:
            if segment is not None:
                segment.close()
                segment.unlink()

    # ----- fetching --------------------------------------------------------------------------

    def _decline(self, params: Any) -> None:
        """Tell a lender this engine will not fetch its lease (it frees the blocks now)."""
        try:
            address = endpoint_address(params.endpoint)
            with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S) as conn:
                send_frame(conn, {"transfer_id": params.transfer_id, "decline": True})
        except (OSError, ValueError) as error:  # its lease then expires at its timeout
            logger.debug("could not decline KV lease %s: %s", params.transfer_id, error)

    def _fetch(self, order: FetchOrder) -> None:
        start = time.perf_counter()
        params = order.params
        try:
            address = endpoint_address(params.endpoint)
            with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S) as conn:
                conn.settimeout(IO_TIMEOUT_S)
                send_frame(conn, {
                    "transfer_id": params.transfer_id,
                    "kv_identity": self.kv_identity,
                    "block_hashes": [encode_hash(h) for h in order.block_hashes],
                    "first_block": order.first_block,
                    "transport": params.transport,
                })  # fmt: skip
                header = recv_frame(conn)
                if header.get("status") != "ok":
                    reason = f"refused: {header.get('reason', 'no reason given')}"
                    self.fetches.deliver(order.request_id, None, reason)
                    return
                num_bytes = int(header["num_bytes"])
                expected_bytes = self.storage.blocks_nbytes(len(order.block_ids))
                if num_bytes != expected_bytes:
                    send_frame(conn, {"ack": False, "reason": "size"})
                    reason = f"layout: {num_bytes} bytes, expected {expected_bytes}"
                    self.fetches.deliver(order.request_id, None, reason)
                    return
                payload = _read_payload(conn, header, num_bytes)
                if zlib.crc32(payload) != header.get("crc32"):
                    send_frame(conn, {"ack": False, "reason": "checksum"})
                    self.fetches.deliver(order.request_id, None, "corrupt: checksum mismatch")
                    return
                send_frame(conn, {"ack": True})
            seconds = time.perf_counter() - start
            self.fetches.deliver(order.request_id, payload, "", num_bytes, seconds)
        except (OSError, ValueError, KeyError) as error:
            reason = f"unreachable or broken: {type(error).__name__}: {error}"
            self.fetches.deliver(order.request_id, None, reason)


def _read_payload(conn: socket.socket, header: dict[str, Any], num_bytes: int) -> bytes:
    name = header.get("shm_name")
    if name is None:
        return recv_exactly(conn, num_bytes)
    segment = shared_memory.SharedMemory(name=str(name))
    try:
        # Attaching registers the segment with this process's tracker too (Python < 3.13): the
        # lending side owns and unlinks it.
        with contextlib.suppress(Exception):
            resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
        return bytes(segment.buf[:num_bytes])  # type: ignore[index]
    finally:
        segment.close()
