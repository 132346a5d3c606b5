"""KVEventsPublisher: the engine core's KV events on vLLM's ZMQ transport, with a snapshot.

Both sockets belong to one background thread; the engine step only queues a batch (the queue
holds max_queue_size batches; a step waits only when that many are unsent).

- PUB at `endpoint`: each batch as three frames [topic, seq, payload]; seq counts batches from 0
  as 8 bytes big-endian, payload is msgpack of [ts, [event, ...], data_parallel_rank]
  (corral/core/kv_events.py has the event layout).
- ROUTER at `replay_endpoint`: a request is [start] behind the empty delimiter (what a REQ socket
  sends; a DEALER sends [b"", start]), start an 8-byte big-endian signed integer.
  start >= 0: one reply [seq, payload] per buffered batch with seq >= start, oldest first (the
  last buffer_steps batches are kept; vLLM's replay).
  start == -1: the snapshot (corral's addition; vLLM answers it with the end marker alone): one
  reply [seq, payload], payload a batch of AllBlocksCleared then BlockStored for every block
  cached once batch seq was applied (seq -1: before the first batch): the device pool's first,
  parents before their children, then the host and disk tiers' (hash-only, one event per medium
  and block size). A subscriber applies it, then the live batches after seq.
  Every answer ends with [END_SEQ, b""], END_SEQ being -1 in 8 bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from array import array
from collections import deque
from typing import NamedTuple

import msgpack
import zmq

from corral.config import KVEventsConfig
from corral.core.block_hash import BlockHash
from corral.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    batch_to_wire,
    is_device_medium,
)

logger = logging.getLogger(__name__)

SNAPSHOT_SEQ = -1
END_SEQ = (-1).to_bytes(8, "big", signed=True)
# How long the thread waits for a batch before it looks at the replay socket again.
_POLL_S = 0.02


class _CachedBlock(NamedTuple):
    parent: BlockHash | None
    token_ids: array
    block_size: int
    lora_name: str | None


class CachedBlocks:
    """The cached blocks as the published events describe them: what a subscriber that applied
    every batch so far knows. blocks: the device pool's (token ids kept compactly, 8 bytes
    each); tiers: per lower-tier medium, its hashes (in the order stored) and block sizes."""

    def __init__(self) -> None:
        self.blocks: dict[BlockHash, _CachedBlock] = {}
        self.tiers: dict[str, dict[BlockHash, int]] = {}

    def apply(self, events: list[KVEvent]) -> None:
        blocks = self.blocks
        for event in events:
            if isinstance(event, BlockStored):
                if not is_device_medium(event.medium):
                    tier = self.tiers.setdefault(str(event.medium), {})
                    for block_hash in event.block_hashes:
                        tier[block_hash] = event.block_size
                    continue
                parent, size = event.parent_block_hash, event.block_size
                for i, block_hash in enumerate(event.block_hashes):
                    tokens = array("q", event.token_ids[i * size : (i + 1) * size])
                    blocks[block_hash] = _CachedBlock(parent, tokens, size, event.lora_name)
                    parent = block_hash
            elif isinstance(event, BlockRemoved):
                if is_device_medium(event.medium):
                    for block_hash in event.block_hashes:
                        blocks.pop(block_hash, None)
                    continue
                tier = self.tiers.get(str(event.medium), {})
                for block_hash in event.block_hashes:
                    tier.pop(block_hash, None)
            else:
                blocks.clear()
                self.tiers.clear()

    def snapshot(self) -> list[KVEvent]:
        """AllBlocksCleared, then one BlockStored per run of a device chain (parents first),
        then one per lower-tier medium and block size."""
        events = self._device_snapshot()
        for medium, tier in self.tiers.items():
            by_size: dict[int, list[BlockHash]] = {}
            for block_hash, size in tier.items():
                by_size.setdefault(size, []).append(block_hash)
            for size, hashes in by_size.items():
                events.append(BlockStored(tuple(hashes), None, (), size, None, None, medium))
        return events

    def _device_snapshot(self) -> list[KVEvent]:
        blocks = self.blocks
        events: list[KVEvent] = [AllBlocksCleared()]
        emitted: set[BlockHash] = set()
        for block_hash in blocks:
            chain: list[BlockHash] = []
            current: BlockHash | None = block_hash
            while current is not None and current in blocks and current not in emitted:
                chain.append(current)
                current = blocks[current].parent
            chain.reverse()  # chain[i] is the parent of chain[i + 1]
            emitted.update(chain)
            run: list[BlockHash] = []
            for chain_hash in chain:
                if run and _key(blocks[chain_hash]) != _key(blocks[run[0]]):
                    events.append(self._stored(run))
                    run = []
                run.append(chain_hash)
            if run:
                events.append(self._stored(run))
        return events

    def _stored(self, run: list[BlockHash]) -> BlockStored:
        first = self.blocks[run[0]]
        tokens: list[int] = []
        for block_hash in run:
            tokens.extend(self.blocks[block_hash].token_ids)
        return BlockStored(
            tuple(run), first.parent, tuple(tokens), first.block_size, first.lora_name
        )


def _key(block: _CachedBlock) -> tuple[int, str | None]:
    return block.block_size, block.lora_name


class KVEventsPublisher:
    """Publishes KV event batches (see the module docstring); data_parallel_rank is sent in
    every batch (corral has one rank per engine: 0)."""

    def __init__(self, config: KVEventsConfig, data_parallel_rank: int = 0) -> None:
        self.config = config
        self.data_parallel_rank = data_parallel_rank
        self._queue: queue.Queue[tuple[float, list[KVEvent]] | None] = queue.Queue(
            config.max_queue_size
        )
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self.cached = CachedBlocks()  # touched by the thread only
        self._next_seq = 0
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="kv-events-publisher", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise OSError(self._error)
        logger.info(
            "KV events on %s (replay and snapshot: %s), topic %r",
            config.endpoint,
            config.replay_endpoint or "off",
            config.topic,
        )

    def publish(self, ts: float, events: list[KVEvent]) -> None:
        """Queue one batch (the engine thread); the publisher thread encodes and sends it."""
        self._queue.put((ts, events))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, then close the sockets."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    # ----- the publisher thread --------------------------------------------------------------

    def _run(self) -> None:
        config = self.config
        context: zmq.Context = zmq.Context.instance()
        pub = context.socket(zmq.PUB)
        replay = context.socket(zmq.ROUTER) if config.replay_endpoint else None
        try:
            pub.set_hwm(config.hwm)
            if _binds(config.endpoint):
                pub.bind(config.endpoint)
            else:
                pub.connect(config.endpoint)
            if replay is not None:
                replay.bind(config.replay_endpoint)
        except zmq.ZMQError as error:
            self._error = (
                f"KV events: cannot open {config.endpoint} / {config.replay_endpoint}: {error}"
            )
            pub.close(linger=0)
            if replay is not None:
                replay.close(linger=0)
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                while replay is not None and replay.poll(0):
                    self._serve_replay(replay)
                try:
                    item = self._queue.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is None:
                    break
                self._send(pub, *item)
        finally:
            pub.close(linger=500)
            if replay is not None:
                replay.close(linger=0)

    def _encode(self, ts: float, events: list[KVEvent]) -> bytes:
        config = self.config
        batch = batch_to_wire(
            ts, events, config.block_hash_format, config.event_encoding, self.data_parallel_rank
        )
        return msgpack.packb(batch, use_bin_type=True)

    def _send(self, pub: zmq.Socket, ts: float, events: list[KVEvent]) -> None:
        seq = self._next_seq
        self._next_seq += 1
        try:
            payload = self._encode(ts, events)
            pub.send_multipart((self.config.topic.encode(), seq.to_bytes(8, "big"), payload))
        except Exception:  # a lost batch shows as a sequence gap; subscribers resynchronize
            logger.exception("KV events: batch %d not sent", seq)
            return
        finally:
            self.cached.apply(events)
        self._buffer.append((seq, payload))

    def _serve_replay(self, replay: zmq.Socket) -> None:
        frames = replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            logger.warning("KV events: malformed replay request (%d frames)", len(frames))
            if frames:  # answer anyway, so that a REQ client is not left waiting
                replay.send_multipart((frames[0], b"", END_SEQ, b""))
            return
        identity, _, start_bytes = frames
        start = int.from_bytes(start_bytes, "big", signed=True)
        if start == SNAPSHOT_SEQ:
            last_seq = self._next_seq - 1
            payload = self._encode(time.time(), self.cached.snapshot())
            replay.send_multipart(
                (identity, b"", last_seq.to_bytes(8, "big", signed=True), payload)
            )
        else:
            for seq, payload in self._buffer:
                if seq >= start:
                    replay.send_multipart((identity, b"", seq.to_bytes(8, "big"), payload))
        replay.send_multipart((identity, b"", END_SEQ, b""))


def _binds(endpoint: str) -> bool:
    """vLLM's rule: bind a wildcard, ipc or inproc address; connect to any other."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))
