"""Chained block hashes for prefix reuse: a block's key covers every token before it."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from typing import Protocol

BlockHash = bytes | int
ExtraKeys = tuple[object, ...]
BlockHashFn = Callable[[BlockHash | None, Sequence[int], ExtraKeys], BlockHash]


class HashedTokens(Protocol):
    """What the KV manager hashes into blocks: a request, or a chunk stored alone
    (corral/core/chunk_reuse.py). block_hashes is extended in place."""

    @property
    def all_token_ids(self) -> list[int]: ...

    @property
    def block_hashes(self) -> list[BlockHash]: ...

    @property
    def adapter_id(self) -> str | None: ...

    @property
    def cache_salt(self) -> object: ...


def sha256_block_hash(
    parent: BlockHash | None, token_ids: Sequence[int], extra: ExtraKeys
) -> bytes:
    """sha256 over (parent digest, token ids, extra keys): stable across processes and restarts."""
    digest = hashlib.sha256()
    digest.update(parent if isinstance(parent, bytes) else b"\0" * 32)
    digest.update(array("q", token_ids).tobytes())
    if extra:
        digest.update(repr(extra).encode())
    return digest.digest()


def builtin_block_hash(parent: BlockHash | None, token_ids: Sequence[int], extra: ExtraKeys) -> int:
    """Python's tuple hash: faster, but 64-bit and only meaningful inside one process."""
    return hash((parent, tuple(token_ids), extra))


BLOCK_HASH_FNS: dict[str, BlockHashFn] = {
    "sha256": sha256_block_hash,
    "builtin": builtin_block_hash,
}
