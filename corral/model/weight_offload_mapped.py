"""Offloaded layers on disk, memory-mapped, for a model on the CPU (see weight_offload.py).

File layout: each offloaded layer's tensors packed back to back (64-byte aligned) in one
page-aligned region of one file; the file is unlinked as soon as it is mapped, so it is gone
when the process ends, however it ends. The mapping is private (copy on write), so the weights
are views the model can compute with in place and nothing is ever written back.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from corral.model.huge_pages import libc_madvise
from corral.model.weight_offload import LayerOffload, TensorRef, pack_layer

# Layer regions start on 2 MiB boundaries: the page cache can then hold them in huge folios that
# map with one page-table entry per 2 MiB (mapping a layer in and out costs far less than 4 KiB
# pages at a time). The gaps between regions are holes in the file.
_REGION_ALIGN_BYTES = max(mmap.PAGESIZE, 2 << 20)
# madvise advice numbers (Linux): populate page tables by reading (5.14+), drop pages, read ahead.
_MADV_POPULATE_READ = 22
MADV_DONTNEED = 4
_MADV_WILLNEED = 3


_madvise = libc_madvise()  # called through ctypes, which lets go of the GIL meanwhile


class LayerFile:
    """The offloaded layers' packed bytes in a private mapping of an unlinked file:
    regions[index] is layer index's (start, length), 2 MiB aligned."""

    def __init__(self, refs: dict[int, tuple[list[TensorRef], int]], directory: str | None):
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
        self.regions: dict[int, tuple[int, int]] = {}
        end = 0
        for index in sorted(refs):
            length = -(-max(refs[index][1], 1) // _REGION_ALIGN_BYTES) * _REGION_ALIGN_BYTES
            self.regions[index] = (end, length)
            end += length
        handle, path = tempfile.mkstemp(prefix="corral-offload-", suffix=".bin", dir=directory)
        try:
            with os.fdopen(handle, "r+b") as file:
                file.truncate(end)
                for index, (start, _) in self.regions.items():
                    layer_refs, size = refs[index]
                    packed = torch.zeros(size, dtype=torch.uint8)
                    pack_layer(layer_refs, packed)
                    file.seek(start)
                    file.write(packed.numpy().tobytes())
                file.flush()
                os.fsync(file.fileno())
                self._mapping = mmap.mmap(file.fileno(), end, access=mmap.ACCESS_COPY)
                self._fd = os.dup(file.fileno())  # for drop_page_cache
        finally:
            os.unlink(path)
        self.bytes = torch.frombuffer(self._mapping, dtype=torch.uint8)
        self._address = self.bytes.data_ptr()

    def region(self, index: int) -> torch.Tensor:
        start, length = self.regions[index]
        return self.bytes[start : start + length]

    def drop_page_cache(self, index: int) -> None:
        """Evict layer index's bytes from the kernel's page cache too, so that the next read
        comes from the disk (benchmarks: a machine whose memory cannot cache the file)."""
        start, length = self.regions[index]
        os.posix_fadvise(self._fd, start, length, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def advise(self, index: int, advice: int) -> bool:
        if _madvise is None:
            return False
        start, length = self.regions[index]
        return _madvise(self._address + start, length, advice) == 0


class MappedLayerOffload(LayerOffload):
    """Offloaded layers as views of a private file mapping; the pages of the next offloaded
    layer are read in by a helper thread while the current layer computes, and each layer's
    pages are dropped from the process after it runs."""

    target = "disk"

    def __init__(self, refs: dict[int, tuple[list[TensorRef], int]], directory: str | None):
        layer_ids = sorted(refs)
        super().__init__(layer_ids, [refs[index][1] for index in layer_ids])
        self.file = LayerFile(refs, directory)
        for index in layer_ids:
            for ref in refs[index][0]:
                ref.point_at(self.file.region(index))
            self.file.advise(index, MADV_DONTNEED)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="corral-offload")
        self._reads: dict[int, Future] = {}
        self.populate_advice = _MADV_POPULATE_READ
        self.drop_page_cache = False  # LayerFile.drop_page_cache after each layer runs

    def _populate(self, index: int) -> None:
        if not self.file.advise(index, self.populate_advice):
            # Kernels before 5.14 refuse MADV_POPULATE_READ: ask for read-ahead instead.
            self.populate_advice = _MADV_WILLNEED
            self.file.advise(index, _MADV_WILLNEED)

    def bring_in(self, index: int, next_index: int) -> None:
        read = self._reads.pop(index, None)
        if read is not None:
            read.result()
        if next_index != index and next_index not in self._reads:
            self._reads[next_index] = self._reader.submit(self._populate, next_index)

    def release(self, index: int) -> None:
        self.file.advise(index, MADV_DONTNEED)
        if self.drop_page_cache:
            self.file.drop_page_cache(index)

    def close(self) -> None:
        self._reader.shutdown(wait=True)
        self._reads.clear()
        self.file.close()
