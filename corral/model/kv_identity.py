"""The disk KV tier's identity: what must match for a stored KV block to be served.

It covers the full content of every weight file (sha256, computed once per file and cached under
corral's cache directory, keyed by the file's resolved path and stat), config.json, the tokenizer
files, the adapter set, and the KV layout (KVSpec). Any difference gives another directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from corral.model.kv_storage import KVSpec
from corral.model.loader import safetensors_files

logger = logging.getLogger(__name__)

# Bump when what the identity covers changes: old directories are then never read again.
_IDENTITY_VERSION = b"corral-kv-v3"  # v3: full weight digests, tokenizer, adapters
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
_MAX_NUM_HASH_THREADS = 4
_CACHE_FORMAT = 1


def default_digest_cache_dir() -> Path:
    from corral.paths import cache_dir

    return cache_dir() / "weight-digests"


def kv_config_hash(
    model_dir: str | Path,
    spec: KVSpec,
    adapters: Sequence[tuple[str, str]] = (),
    digest_cache_dir: str | Path | None = None,
) -> str:
    """The disk tier's directory key for model_dir's weights, config, tokenizer, the adapter set
    (pairs of adapter name and adapter identity; order does not matter) and the KV layout."""
    directory = Path(model_dir)
    cache = Path(digest_cache_dir) if digest_cache_dir is not None else default_digest_cache_dir()
    weight_files = safetensors_files(directory)
    num_threads = max(1, min(_MAX_NUM_HASH_THREADS, len(weight_files)))
    with ThreadPoolExecutor(num_threads, thread_name_prefix="corral-weight-digest") as pool:
        weight_digests = list(pool.map(lambda path: weight_file_digest(path, cache), weight_files))
    digest = hashlib.sha256(_IDENTITY_VERSION)
    _update_item(digest, b"config.json", (directory / "config.json").read_bytes())
    for path, weight_digest in zip(weight_files, weight_digests):
        _update_item(digest, f"weights:{path.name}".encode(), weight_digest.encode())
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            _update_item(digest, f"tokenizer:{name}".encode(), path.read_bytes())
    for adapter_name, adapter_identity in sorted(adapters):
        _update_item(digest, f"adapter:{adapter_name}".encode(), adapter_identity.encode())
    _update_item(digest, b"kv-spec", repr(spec).encode())
    return digest.hexdigest()[:32]


def weight_file_digest(path: str | Path, digest_cache_dir: str | Path) -> str:
    """sha256 of the file's content; reused from the cache while the file's resolved path, size,
    mtime, ctime and inode are unchanged, else recomputed and stored."""
    resolved = Path(path).resolve()
    key = _stat_key(resolved)
    entry_path = Path(digest_cache_dir) / (
        hashlib.sha256(str(resolved).encode()).hexdigest()[:32] + ".json"
    )
    cached = _read_entry(entry_path)
    if cached is not None and cached.get("key") == key:
        return cached["sha256"]
    logger.info(
        "hashing %s (%.1f MiB) for the KV disk tier's identity (cached afterwards)",
        resolved,
        key["size_bytes"] / 2**20,
    )
    with open(resolved, "rb") as handle:
        content_digest = hashlib.file_digest(handle, "sha256").hexdigest()
    # A file that changed while it was read may not match content_digest: not cached.
    if _stat_key(resolved) == key:
        _write_entry(entry_path, {"key": key, "sha256": content_digest})
    return content_digest


def _update_item(digest: hashlib._Hash, name: bytes, content: bytes) -> None:
    # Length-prefixed, so no two different sequences of items feed the same bytes.
    for part in (name, content):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)


def _stat_key(path: Path) -> dict[str, int | str]:
    stat = path.stat()
    return {
        "format": _CACHE_FORMAT,
        "path": str(path),
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }


def _read_entry(entry_path: Path) -> dict | None:
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    return entry


def _write_entry(entry_path: Path, entry: dict) -> None:
    temporary = entry_path.with_name(f"{entry_path.name}.{os.getpid()}.tmp")
    try:
        entry_path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(entry))
        os.replace(temporary, entry_path)
    except OSError as error:
        logger.warning("could not cache the weight digest in %s: %s", entry_path, error)
        with contextlib.suppress(OSError):
            temporary.unlink()
