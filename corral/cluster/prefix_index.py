"""PrefixIndex: which replicas hold which KV blocks, for prefix-aware routing (torch-free).

Blocks are named by their chained hashes (corral/core/block_hash.py): the hash of block k covers
every token of blocks 0..k, so "replica r holds the first n blocks of a prompt" is "r holds the
prompt's hashes 0..n-1". Two sources of that knowledge, one class each:

- EstimatedPrefixIndex: what the router itself sent where (on_routed), kept per replica as an LRU
  of at most num_blocks hashes; costs no replica query, and is all the simulator has.
- ReportedPrefixIndex: what the replicas say they cache (KV events: stored, removed, cleared),
  in which medium: a replica's device pool, or its host-memory or disk tier.

Both answer match(hashes) -> {replica: number of leading blocks it holds}, for replicas holding at
least the first block, and match_scores(hashes), the same leading blocks weighted by the medium
each is held in (docs/router.md: a lower-tier block saves its recompute less the cost of bringing
it to the device). Replica indices are the router's indices into its replica list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Protocol

from corral.core.block_hash import BlockHash
from corral.core.kv_events import MEDIUM_DEVICE, MEDIUM_DISK, MEDIUM_HOST

# A block's worth in a match, by the medium it is held in, in device blocks: what using it saves
# (its recompute) less what bringing it to the device costs (docs/router.md, "Reported KV
# events and tiers").
DEFAULT_MEDIUM_WEIGHTS: Mapping[str, float] = {
    MEDIUM_DEVICE: 1.0,
    MEDIUM_HOST: 0.8,
    MEDIUM_DISK: 0.5,
}
# A medium the weights do not name (another engine's lower tier) weighs as the disk tier.
UNKNOWN_MEDIUM_WEIGHT = 0.5


class HoldsBlocks(Protocol):
    """A replica's KV pool size (routing.ReplicaLoad has it)."""

    @property
    def num_blocks(self) -> int: ...


class PrefixIndex(ABC):
    """Which replicas hold which blocks: answers longest-prefix queries.

    The on_* verbs are the events that change what a replica holds; an index reacts to those
    that are its source of truth and ignores the others (each class says which).
    """

    def __init__(self) -> None:
        # block hash -> replicas holding it; a hash with no holder has no entry.
        self._owners: dict[BlockHash, set[int]] = {}

    def match(self, hashes: Sequence[BlockHash]) -> dict[int, int]:
        """Replica index -> number of leading blocks of `hashes` it holds (only replicas that
        hold at least hashes[0]). A replica missing block k counts k, whatever it holds after."""
        result: dict[int, int] = {}
        alive: set[int] | None = None
        for num_blocks, block_hash in enumerate(hashes, 1):
            owners = self._owners.get(block_hash)
            if not owners:
                break
            alive = set(owners) if alive is None else alive & owners
            if not alive:
                break
            for replica in alive:
                result[replica] = num_blocks
        return result

    def match_scores(self, hashes: Sequence[BlockHash]) -> dict[int, float]:
        """Replica index -> the leading blocks of match(hashes), each weighted by the medium it
        is held in (1.0 for the device pool). An index that knows no media weighs each 1.0."""
        return {replica: float(n) for replica, n in self.match(hashes).items()}

    @abstractmethod
    def on_routed(self, replica: int, hashes: Sequence[BlockHash]) -> None:
        """The router sent a prompt with these full blocks (in order) to the replica."""

    @abstractmethod
    def on_stored(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        """The replica reported these blocks cached in `medium` (a KV event, or a snapshot on
        connect; None: its device pool)."""

    @abstractmethod
    def on_removed(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        """The replica reported these blocks evicted from `medium` (None: its device pool)."""

    @abstractmethod
    def on_cleared(self, replica: int) -> None:
        """The replica restarted, cleared its cache or reconnected: forget all it held."""

    def num_blocks_held(self, replica: int) -> int:
        """How many blocks the index believes the replica holds."""
        return sum(1 for owners in self._owners.values() if replica in owners)

    def _add(self, replica: int, block_hash: BlockHash) -> None:
        self._owners.setdefault(block_hash, set()).add(replica)

    def _discard(self, replica: int, block_hash: BlockHash) -> None:
        owners = self._owners.get(block_hash)
        if owners is not None:
            owners.discard(replica)
            if not owners:
                del self._owners[block_hash]


class EstimatedPrefixIndex(PrefixIndex):
    """Per replica, an LRU of the block hashes of the prompts routed there, at most
    replicas[replica].num_blocks of them (read live): an estimate of its prefix cache.

    Fed by on_routed only; on_stored and on_removed are ignored (use ReportedPrefixIndex when
    the replicas report), on_cleared forgets the replica. A routed prompt's blocks are touched
    in order, so its first block is the least recent of them (today's simulator behaviour).
    """

    def __init__(self, replicas: Sequence[HoldsBlocks]) -> None:
        super().__init__()
        self.replicas = replicas
        self._lru: dict[int, OrderedDict[BlockHash, None]] = {}

    def on_routed(self, replica: int, hashes: Sequence[BlockHash]) -> None:
        lru = self._lru.setdefault(replica, OrderedDict())
        for block_hash in hashes:
            if block_hash in lru:
                lru.move_to_end(block_hash)
            else:
                lru[block_hash] = None
                self._add(replica, block_hash)
        capacity = self.replicas[replica].num_blocks
        while len(lru) > capacity:
            evicted, _ = lru.popitem(last=False)
            self._discard(replica, evicted)

    def on_stored(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        """Ignored: this index estimates from routing alone."""

    def on_removed(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        """Ignored: this index estimates from routing alone."""

    def on_cleared(self, replica: int) -> None:
        for block_hash in self._lru.pop(replica, ()):
            self._discard(replica, block_hash)

    def num_blocks_held(self, replica: int) -> int:
        return len(self._lru.get(replica, ()))


class ReportedPrefixIndex(PrefixIndex):
    """What the replicas report they cache, per medium: on_stored adds a medium to a block,
    on_removed takes one away (the block stays while another medium holds it), on_cleared
    forgets the replica (call it before replaying a snapshot on reconnect).

    match counts a block held in any medium; match_scores weighs it by the best medium holding
    it (medium_weights, each in [0, 1]; default DEFAULT_MEDIUM_WEIGHTS; a medium of None is the
    device pool). on_routed is ignored: a prompt counts only once its replica reports its blocks
    stored, so a follow-up that arrives before that report is routed by load. Hashes must be
    computed exactly as the replicas' KV managers compute them (routing.prompt_block_hashes,
    same prefix_hash).
    """

    def __init__(self, medium_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        weights = dict(DEFAULT_MEDIUM_WEIGHTS if medium_weights is None else medium_weights)
        for medium, weight in weights.items():
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"the weight of medium {medium!r} must be in [0, 1], got {weight}")
        self.medium_weights = weights
        # replica -> block hash -> the media holding it, one bit each (bit i: _media[i]).
        self._held: dict[int, dict[BlockHash, int]] = {}
        self._media: list[str] = []
        self._mask_weights: dict[int, float] = {}

    def on_routed(self, replica: int, hashes: Sequence[BlockHash]) -> None:
        """Ignored: only the replicas' reports count."""

    def on_stored(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        held = self._held.setdefault(replica, {})
        bit = self._bit(medium)
        for block_hash in hashes:
            mask = held.get(block_hash, 0)
            if not mask:
                self._add(replica, block_hash)
            held[block_hash] = mask | bit

    def on_removed(
        self, replica: int, hashes: Sequence[BlockHash], medium: str | None = None
    ) -> None:
        held = self._held.get(replica)
        if held is None:
            return
        bit = self._bit(medium)
        for block_hash in hashes:
            mask = held.get(block_hash, 0) & ~bit
            if mask:
                held[block_hash] = mask
            elif block_hash in held:
                del held[block_hash]
                self._discard(replica, block_hash)

    def on_cleared(self, replica: int) -> None:
        for block_hash in self._held.pop(replica, ()):
            self._discard(replica, block_hash)

    def num_blocks_held(self, replica: int) -> int:
        return len(self._held.get(replica, ()))

    def held_media(self, replica: int, block_hash: BlockHash) -> set[str]:
        """The media the replica reported holding the block in (empty: none)."""
        mask = self._held.get(replica, {}).get(block_hash, 0)
        return {medium for i, medium in enumerate(self._media) if mask >> i & 1}

    def match_scores(self, hashes: Sequence[BlockHash]) -> dict[int, float]:
        scores: dict[int, float] = {}
        for replica, num_blocks in self.match(hashes).items():
            held = self._held[replica]
            scores[replica] = sum(self._weight(held[h]) for h in hashes[:num_blocks])
        return scores

    def _bit(self, medium: str | None) -> int:
        name = MEDIUM_DEVICE if medium is None else medium
        if name not in self._media:
            self._media.append(name)
        return 1 << self._media.index(name)

    def _weight(self, mask: int) -> float:
        """The weight of the best medium in mask."""
        weight = self._mask_weights.get(mask)
        if weight is None:
            weight = max(
                self.medium_weights.get(medium, UNKNOWN_MEDIUM_WEIGHT)
                for i, medium in enumerate(self._media)
                if mask >> i & 1
            )
            self._mask_weights[mask] = weight
        return weight
