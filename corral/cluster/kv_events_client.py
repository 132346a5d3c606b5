"""KVEventsSubscriber: one replica's KV events (vLLM's wire format), for the router's view of
which blocks each replica holds.

A thread subscribes to the replica's PUB socket and keeps the stream whole: on start, and when
it cannot be repaired, it asks the replay socket for a snapshot (AllBlocksCleared + BlockStored
of every cached block, tagged with the last sequence number it covers); on a sequence gap it asks
for the missed batches. Hashes reach the callbacks as sent: with the publisher's default
"block_hash_format": "int" they are corral.core.kv_events.external_block_hash of the replica's
Request.block_hashes (corral.core.block_hash on the same token ids gives the same values).
Each stored or removed event reaches its callback with its medium as sent ("GPU" for the
replica's device pool, "CPU" and "DISK" for corral's host and disk tiers; None from a publisher
that predates the field).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import msgpack
import zmq

from corral.core.block_hash import BlockHash
from corral.core.kv_events import BlockRemoved, BlockStored, KVEvent, batch_from_wire

logger = logging.getLogger(__name__)

SNAPSHOT_SEQ = -1
_POLL_MS = 50


class KVEventsSubscriber:
    """Feeds on_stored(hashes, medium), on_removed(hashes, medium) and on_cleared() from one
    publisher, in a daemon thread (callbacks run there). With a replay endpoint the view is
    exact: a snapshot first, gaps repaired; without one, gaps are counted (num_gaps) and
    skipped.

    stats: last_seq (the last batch applied), num_batches, num_gaps, num_snapshots.
    """

    def __init__(
        self,
        endpoint: str,
        replay_endpoint: str | None = None,
        topic: str = "",
        *,
        on_stored: Callable[[list[BlockHash], str | None], None],
        on_removed: Callable[[list[BlockHash], str | None], None],
        on_cleared: Callable[[], None],
        replay_timeout_s: float = 2.0,
    ) -> None:
        self.endpoint = _loopback(endpoint)
        self.replay_endpoint = _loopback(replay_endpoint) if replay_endpoint else None
        self.topic = topic.encode()
        self.on_stored, self.on_removed, self.on_cleared = on_stored, on_removed, on_cleared
        self.replay_timeout_ms = int(replay_timeout_s * 1000)
        self.last_seq = -1  # the last batch applied (-1: none)
        self.num_batches = self.num_gaps = self.num_snapshots = 0
        self.synced = threading.Event()  # set once a snapshot (or the first batch) was applied
        self._stop = threading.Event()
        self._context: zmq.Context = zmq.Context.instance()
        self._replay: zmq.Socket | None = None
        self._thread = threading.Thread(target=self._run, name="kv-events-subscriber", daemon=True)

    def start(self) -> KVEventsSubscriber:
        self._thread.start()
        return self

    @property
    def is_running(self) -> bool:
        """False once closed, or stopped by an error (logged; the view is then stale)."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ----- the subscriber thread -------------------------------------------------------------

    def _run(self) -> None:
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        sub.connect(self.endpoint)
        # Whether the last applied batch came from the live stream: after that, a batch at or
        # below last_seq means the publisher restarted (before it, it is a duplicate).
        is_live = False
        try:
            if self.replay_endpoint is not None:
                while not self._stop.is_set() and not self._snapshot():
                    pass
            while not self._stop.is_set():
                if not sub.poll(_POLL_MS):
                    continue
                frames = sub.recv_multipart()
                if len(frames) != 3:
                    logger.warning("KV events: a message of %d frames skipped", len(frames))
                    continue
                _, seq_bytes, payload = frames
                seq = int.from_bytes(seq_bytes, "big")
                if seq <= self.last_seq:
                    if is_live:
                        logger.warning("KV events: %s restarted (seq %d)", self.endpoint, seq)
                        is_live = self._resync(seq, payload)
                    continue
                if seq > self.last_seq + 1:
                    self.num_gaps += 1
                    if self.replay_endpoint is not None:
                        self._repair(seq)
                        is_live = False
                        if seq <= self.last_seq:
                            continue
                self._apply(seq, payload)
                is_live = True
        except Exception:
            logger.exception("KV events subscriber of %s stopped", self.endpoint)
        finally:
            sub.close(linger=0)
            if self._replay is not None:
                self._replay.close(linger=0)

    def _resync(self, seq: int, payload: bytes) -> bool:
        """After a publisher restart: a snapshot, else this batch from a cleared view."""
        self.last_seq = -1
        if self.replay_endpoint is not None and self._snapshot():
            if seq > self.last_seq:
                self._apply(seq, payload)
                return True
            return False
        self.on_cleared()
        self._apply(seq, payload)
        return True

    def _repair(self, seq: int) -> None:
        """Batches last_seq+1 .. seq-1 were missed: replay them, or take a snapshot when the
        publisher no longer has them all."""
        expected = self.last_seq + 1
        replies = self._request(expected)
        if replies and replies[0][0] == expected:
            for reply_seq, payload in replies:
                if reply_seq == self.last_seq + 1:
                    self._apply(reply_seq, payload)
            if self.last_seq >= seq - 1:
                return
        self._snapshot()

    def _snapshot(self) -> bool:
        """Replace the view with the publisher's snapshot; False when it did not answer. A
        publisher without snapshots (vLLM answers the end marker alone) is replayed from its
        oldest buffered batch instead: exact while that is batch 0."""
        replies = self._request(SNAPSHOT_SEQ)
        if replies is None:
            return False
        self.num_snapshots += 1
        if replies:
            seq, payload = replies[0]
            _, events, _ = batch_from_wire(msgpack.unpackb(payload, raw=False))
            self._dispatch(events)
            self.last_seq = seq
            self.synced.set()
            return True
        replies = self._request(0)
        if replies is None:
            return False
        if replies and replies[0][0] != 0:
            logger.warning("KV events: %s has no snapshot and no longer batch 0", self.endpoint)
        self.on_cleared()
        self.last_seq = -1
        for seq, payload in replies:
            self._apply(seq, payload)
        self.synced.set()
        return True

    def _request(self, start: int) -> list[tuple[int, bytes]] | None:
        """Ask the replay socket from start; its replies up to the end marker, or None when it
        did not answer in time (the socket is then replaced, dropping late replies)."""
        if self._replay is None:
            assert self.replay_endpoint is not None
            self._replay = self._context.socket(zmq.DEALER)
            self._replay.connect(self.replay_endpoint)
        replay = self._replay
        replay.send_multipart((b"", start.to_bytes(8, "big", signed=True)))
        replies: list[tuple[int, bytes]] = []
        while not self._stop.is_set():
            if not replay.poll(self.replay_timeout_ms):
                replay.close(linger=0)
                self._replay = None
                return None
            frames = replay.recv_multipart()
            seq_bytes, payload = frames[-2], frames[-1]
            if not payload:  # the end marker
                return replies
            replies.append((int.from_bytes(seq_bytes, "big", signed=True), payload))
        return None

    def _apply(self, seq: int, payload: bytes) -> None:
        _, events, _ = batch_from_wire(msgpack.unpackb(payload, raw=False))
        self._dispatch(events)
        self.last_seq = seq
        self.num_batches += 1
        self.synced.set()

    def _dispatch(self, events: list[KVEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self.on_stored(list(event.block_hashes), event.medium)
            elif isinstance(event, BlockRemoved):
                self.on_removed(list(event.block_hashes), event.medium)
            else:
                self.on_cleared()


def _loopback(endpoint: str) -> str:
    """A publisher's bind address (tcp://*:5557) as an address to connect to."""
    return endpoint.replace("://*:", "://127.0.0.1:")
