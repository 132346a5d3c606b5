"""DiskKVStore: KV blocks as files under <root>/<config hash>/, written and read in the background.

A file is a header (magic, config hash, block hash, payload length, crc32) and the payload. A file
whose header or checksum does not match is reported as failed, deleted, and never served.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from corral.core.kv_transfer import DiskReadResult

logger = logging.getLogger(__name__)

_MAGIC = b"CORRALKV"
_HEADER = struct.Struct("<8s32s32sQI")  # magic, config hash, block hash, payload length, crc32
_SUFFIX = ".kvblock"


class DiskKVStore:
    def __init__(self, root: str | Path, config_hash: str, payload_nbytes: int) -> None:
        self.config_hash = bytes.fromhex(config_hash)[:32].ljust(32, b"\0")
        self.directory = Path(root) / config_hash
        self.directory.mkdir(parents=True, exist_ok=True)
        self.payload_nbytes = payload_nbytes
        # One worker: writes, deletes and reads of a block run in the order they were issued.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-kv-disk")
        self._finished: queue.SimpleQueue[DiskReadResult] = queue.SimpleQueue()
        self._pending: list[Future] = []
        self.num_corrupt = 0

    def existing_hashes(self) -> list[bytes]:
        """Block hashes with a file here, oldest first (the LRU order after a restart)."""
        files = sorted(self.directory.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime_ns)
        hashes = []
        for path in files:
            try:
                hashes.append(bytes.fromhex(path.name.removesuffix(_SUFFIX)))
            except ValueError:
                continue
        return hashes

    def has_block(self, block_hash: bytes | int) -> bool:
        """A file for the block exists (written by this engine or another sharing the
        directory); one stat, on the scheduler's thread."""
        return isinstance(block_hash, bytes) and self.path(block_hash).exists()

    def path(self, block_hash: bytes) -> Path:
        return self.directory / f"{block_hash.hex()}{_SUFFIX}"

    def write(self, block_hash: bytes, payload: bytes) -> None:
        """Write in the background (atomically: a temporary file renamed into place)."""
        self._track(self._worker.submit(self._write, block_hash, payload))

    def delete(self, block_hash: bytes) -> None:
        self._track(self._worker.submit(self._delete, block_hash))

    def read(self, block_hash: bytes, slot: int, sink: Callable[[int, bytes], None]) -> None:
        """Read and verify in the background; sink(slot, payload) stores a good payload, and the
        result (ok or not) is reported by poll()."""
        self._track(self._worker.submit(self._read, block_hash, slot, sink))

    def poll(self) -> list[DiskReadResult]:
        results = []
        while True:
            try:
                results.append(self._finished.get_nowait())
            except queue.Empty:
                return results

    def flush(self) -> None:
        """Wait for every queued write, delete and read."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self._worker.shutdown(wait=True)

    def _track(self, future: Future) -> None:
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(future)

    def _write(self, block_hash: bytes, payload: bytes) -> None:
        header = _HEADER.pack(
            _MAGIC, self.config_hash, block_hash, len(payload), zlib.crc32(payload)
        )
        target = self.path(block_hash)
        temporary = target.with_suffix(".tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(header)
                handle.write(payload)
            os.replace(temporary, target)
        except OSError as error:
            logger.warning("could not write KV block %s: %s", target.name, error)

    def _delete(self, block_hash: bytes) -> None:
        self.path(block_hash).unlink(missing_ok=True)

    def _read(self, block_hash: bytes, slot: int, sink: Callable[[int, bytes], None]) -> None:
        path = self.path(block_hash)
        ok = False
        try:
            data = path.read_bytes()
            ok = self._valid(data, block_hash)
            if ok:
                sink(slot, data[_HEADER.size :])
        except OSError:
            ok = False
        if not ok:
            self.num_corrupt += 1
            logger.warning("KV block file %s is missing or corrupt; recomputing it", path.name)
            path.unlink(missing_ok=True)
        self._finished.put(DiskReadResult(block_hash, slot, ok))

    def _valid(self, data: bytes, block_hash: bytes) -> bool:
        if len(data) < _HEADER.size:
            return False
        magic, config_hash, stored_hash, length, crc = _HEADER.unpack_from(data)
        payload = data[_HEADER.size :]
        return (
            magic == _MAGIC
            and config_hash == self.config_hash
            and stored_hash == block_hash
            and length == len(payload) == self.payload_nbytes
            and zlib.crc32(payload) == crc
        )
