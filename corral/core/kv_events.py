"""KV cache events: the prefix cache's contents as a stream, in vLLM's KV-events schema.

The KV manager records an event when it registers full blocks in the prefix cache (BlockStored),
when a cached block is evicted for reuse (BlockRemoved) and when reset_prefix_cache leaves the
cache empty (AllBlocksCleared). Its lower tiers (corral/core/kv_tiers.py) record theirs too: a
block entering the host tier (medium "CPU") or the disk tier ("DISK") is a BlockStored of that
medium, one leaving it a BlockRemoved of that medium. The engine takes them after each step
(KVEventBuffer.take) and hands them to a publisher (corral/serve/kv_events_publisher.py);
routers subscribe (corral/cluster/kv_events_client.py). Recording is off unless a KVEventBuffer
is attached: the hooks cost one None check then.

A block may sit in several media at once (a host hit loaded back keeps its host entry): each
medium's events describe that medium alone, as vLLM's offloading connector sends them. Tier
events carry the hashes only (parent None, no token ids, as vLLM's do): the tiers know a block
by its hash. Within one batch, a device eviction's BlockRemoved comes before the BlockStored of
the host copy it leaves, so a consumer that ignores medium ends with the block still held.

Hashes in these events are the KV manager's own (exactly Request.block_hashes). On the wire they
are mapped by external_block_hash: vLLM's default int form (the low 64 bits of the digest read
big-endian) or the raw digest bytes ("block_hash_format": "bytes").

Wire layout (msgpack; docs/server.md): a batch is [ts, [event, ...], data_parallel_rank]; an event
is a tagged array (vLLM up to its map switch, the default here)

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
     lora_name]
    ["BlockRemoved", block_hashes, medium]
    ["AllBlocksCleared"]

or, with "event_encoding": "map" (vLLM after PR 42892), a map with the tag under "type" and the
same field names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from corral.core.block_hash import BlockHash

# Media, as sent. vLLM's names for the engine's own KV pool (sent whatever the device is) and
# for host memory (its CPU offloading spec); vLLM names no disk medium, "DISK" is corral's.
MEDIUM_DEVICE = "GPU"
MEDIUM_HOST = "CPU"
MEDIUM_DISK = "DISK"
BLOCK_HASH_FORMATS = ("int", "bytes")
EVENT_ENCODINGS = ("array", "map")
_MASK_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive blocks of one chain entered the prefix cache: block_hashes[i] is the parent
    of block_hashes[i + 1]; parent_block_hash is the first one's (None: it starts a prompt).
    token_ids holds block_size tokens per block, concatenated."""

    block_hashes: tuple[BlockHash, ...]
    parent_block_hash: BlockHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None = None  # the LoRA adapter's name (None: the base model)
    lora_id: int | None = None  # vLLM's integer adapter id; corral sends None
    medium: str | None = MEDIUM_DEVICE


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """These blocks left the prefix cache (evicted for reuse, or dropped by a reset)."""

    block_hashes: tuple[BlockHash, ...]
    medium: str | None = MEDIUM_DEVICE


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The prefix cache is empty: every block stored before is gone."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def is_device_medium(medium: str | None) -> bool:
    """Whether an event's medium names the engine's own KV pool (None: a sender that predates
    the field, whose events are all about that pool)."""
    return medium is None or medium == MEDIUM_DEVICE


class KVEventBuffer:
    """The events of one KV manager since the last take(), in order. Consecutive removals of one
    medium are merged into one BlockRemoved, consecutive tier stores of one medium into one
    BlockStored; a clear drops what was pending before it (it supersedes it)."""

    __slots__ = ("block_size", "_events", "_run", "_run_hashes")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._events: list[KVEvent] = []
        # The run being merged: (is_removal, medium) and its hashes, in order.
        self._run: tuple[bool, str] | None = None
        self._run_hashes: list[BlockHash] = []

    def record_stored(
        self,
        block_hashes: Sequence[BlockHash],
        start: int,
        stop: int,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """Blocks start..stop-1 of one request (its block_hashes and all_token_ids) were
        registered in the prefix cache."""
        if stop <= start:
            return
        self._flush_run()
        size = self.block_size
        parent = block_hashes[start - 1] if start > 0 else None
        self._events.append(
            BlockStored(
                tuple(block_hashes[start:stop]),
                parent,
                tuple(token_ids[start * size : stop * size]),
                size,
                lora_name,
            )
        )

    def record_removed(self, block_hash: BlockHash, medium: str = MEDIUM_DEVICE) -> None:
        """The block left this medium (evicted, dropped, or its file deleted)."""
        self._extend_run((True, medium), block_hash)

    def record_tier_stored(self, block_hash: BlockHash, medium: str) -> None:
        """The block entered a lower tier (host memory or disk): a hash-only BlockStored."""
        self._extend_run((False, medium), block_hash)

    def record_cleared(self) -> None:
        self._events.clear()
        self._run, self._run_hashes = None, []
        self._events.append(AllBlocksCleared())

    def take(self) -> list[KVEvent]:
        """The events recorded since the last call, oldest first."""
        self._flush_run()
        events, self._events = self._events, []
        return events

    def _extend_run(self, run: tuple[bool, str], block_hash: BlockHash) -> None:
        if run != self._run:
            self._flush_run()
            self._run = run
        self._run_hashes.append(block_hash)

    def _flush_run(self) -> None:
        if self._run is None:
            return
        (is_removal, medium), hashes = self._run, tuple(self._run_hashes)
        if is_removal:
            self._events.append(BlockRemoved(hashes, medium))
        else:
            self._events.append(BlockStored(hashes, None, (), self.block_size, None, None, medium))
        self._run, self._run_hashes = None, []


# ----- wire form (plain Python objects; msgpack encodes them) -------------------------------


def external_block_hash(block_hash: BlockHash, block_hash_format: str = "int") -> BlockHash:
    """A block hash as sent: "int" (vLLM's default), the digest's low 64 bits read big-endian
    (int.from_bytes(digest, "big") & (2**64 - 1)), or "bytes", the digest itself. Integer hashes
    (prefix_hash "builtin") are sent as unsigned 64-bit ints in both forms."""
    if isinstance(block_hash, int):
        return block_hash & _MASK_64
    if block_hash_format == "int":
        return int.from_bytes(block_hash, "big") & _MASK_64
    return block_hash


def event_to_wire(
    event: KVEvent, block_hash_format: str = "int", encoding: str = "array"
) -> list[Any] | dict[str, Any]:
    """One event in vLLM's field order (array) or by field name (map)."""

    def ext(hashes: Sequence[BlockHash]) -> list[BlockHash]:
        return [external_block_hash(h, block_hash_format) for h in hashes]

    fields: list[tuple[str, Any]]
    if isinstance(event, BlockStored):
        parent = event.parent_block_hash
        fields = [
            ("block_hashes", ext(event.block_hashes)),
            ("parent_block_hash", None if parent is None else ext([parent])[0]),
            ("token_ids", list(event.token_ids)),
            ("block_size", event.block_size),
            ("lora_id", event.lora_id),
            ("medium", event.medium),
            ("lora_name", event.lora_name),
        ]
    elif isinstance(event, BlockRemoved):
        fields = [("block_hashes", ext(event.block_hashes)), ("medium", event.medium)]
    else:
        fields = []
    tag = type(event).__name__
    if encoding == "map":
        return {"type": tag, **dict(fields)}
    return [tag, *(value for _, value in fields)]


def batch_to_wire(
    ts: float,
    events: Sequence[KVEvent],
    block_hash_format: str = "int",
    encoding: str = "array",
    data_parallel_rank: int = 0,
) -> list[Any]:
    """vLLM's KVEventBatch: [ts, events, data_parallel_rank] (an array in both encodings)."""
    return [
        float(ts),
        [event_to_wire(e, block_hash_format, encoding) for e in events],
        data_parallel_rank,
    ]


def event_from_wire(obj: Any) -> KVEvent:
    """Decode one event of either encoding (hashes stay as sent). Fields vLLM added later are
    optional; fields unknown here are ignored. ValueError on an unknown tag or a bad shape."""
    if isinstance(obj, dict):
        tag = obj.get("type")
        get = obj.get
    elif isinstance(obj, (list, tuple)) and obj:
        tag = obj[0]
        names = _ARRAY_FIELDS.get(tag if isinstance(tag, str) else "", ())
        values = dict(zip(names, obj[1:]))
        get = values.get
    else:
        raise ValueError(f"not a KV event: {obj!r:.200}")
    if tag == "BlockStored":
        parent = get("parent_block_hash")
        return BlockStored(
            tuple(get("block_hashes") or ()),
            parent,
            tuple(get("token_ids") or ()),
            int(get("block_size") or 0),
            get("lora_name"),
            get("lora_id"),
            get("medium"),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(tuple(get("block_hashes") or ()), get("medium"))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise ValueError(f"unknown KV event type {tag!r}")


def batch_from_wire(obj: Any) -> tuple[float, list[KVEvent], int | None]:
    """(ts, events, data_parallel_rank) of a decoded KVEventBatch (array or map form)."""
    if isinstance(obj, dict):
        ts, events, rank = obj.get("ts"), obj.get("events"), obj.get("data_parallel_rank")
    elif isinstance(obj, (list, tuple)) and len(obj) >= 2:
        ts, events = obj[0], obj[1]
        rank = obj[2] if len(obj) > 2 else None
    else:
        raise ValueError(f"not a KV event batch: {obj!r:.200}")
    if not isinstance(events, (list, tuple)) or not isinstance(ts, (int, float)):
        raise ValueError(f"not a KV event batch (ts, events): {obj!r:.200}")
    return float(ts), [event_from_wire(e) for e in events], rank


# Positional fields after the tag, in vLLM's declaration order.
_ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    ),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}
