"""The weights and the KV pool on 2 MiB pages (Linux transparent huge pages in madvise mode).

A decode step reads every weight once and each running request's KV blocks, hundreds of MB
scattered over 4 KiB pages; on 2 MiB pages one TLB entry covers 512 times as much (fewer TLB
misses are the presumed cause of the gain below; they were not counted).
Measured on the 2-vCPU AMX Xeon under the avx512_bf16 cap (the linears of the SmolLM-135M-shaped
model, 30 layers streamed from memory): 9.0 -> 7.0-7.5 ms a one-row step, 31.0 -> 29.5-30.3 ms a
32-row one (docs/performance.md).

Huge pages are asked for with madvise(MADV_HUGEPAGE) on a 2 MiB-aligned arena before anything
touches it, so that the first touch faults in huge pages (defrag "madvise" compacts for it). The
weights move into one arena after packing: each tensor keeps its identity (Tensor.set_ onto the
arena's storage), so whatever holds them (layers, packed weights, the layer loop's lists) reads
the moved bytes. Where the kernel has no transparent huge pages, or they are "never", nothing
moves (is_available). Offloaded layers stream through buffers of their own and are not moved.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)

HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14  # Linux
# Smaller tensors (norm weights, biases) stay where they are.
MIN_MOVED_BYTES = 64 << 10
_ALIGN_BYTES = 64
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def libc_madvise():
    """libc's madvise(address, length, advice) through ctypes (which lets go of the GIL
    meanwhile), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_madvise = libc_madvise() if sys.platform.startswith("linux") else None


def thp_mode() -> str | None:
    """The kernel's transparent huge page setting (always, madvise or never), None without."""
    try:
        with open(_THP_SETTING) as file:
            text = file.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def is_available() -> bool:
    """Whether asking for huge pages can get them here."""
    return _madvise is not None and thp_mode() in ("always", "madvise")


def huge_page_arena(num_bytes: int) -> torch.Tensor:
    """num_bytes of uninitialized CPU memory (uint8) starting on a 2 MiB boundary, asked to be
    backed by huge pages (when is_available; else plain memory)."""
    num_bytes = max(int(num_bytes), 1)
    span = -(-num_bytes // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    raw = torch.empty(span + HUGE_PAGE_BYTES, dtype=torch.uint8)
    offset = -raw.data_ptr() % HUGE_PAGE_BYTES
    arena = raw[offset : offset + num_bytes]
    if is_available() and _madvise(arena.data_ptr(), span, _MADV_HUGEPAGE) != 0:
        logger.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
    return arena


def huge_page_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """torch.zeros(shape, dtype=dtype) in a huge-page arena (the zeroing is its first touch)."""
    num_bytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    return huge_page_arena(num_bytes).view(dtype).view(shape).zero_()


def move_to_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Move the contiguous CPU tensors of at least MIN_MOVED_BYTES among `tensors` into one
    huge-page arena, in place (each keeps its identity, shape and values); returns the bytes
    moved. Tensors sharing storage with another (views, tied weights) are moved once."""
    chosen: list[torch.Tensor] = []
    seen: set[int] = set()
    for tensor in tensors:
        if (
            tensor.device.type != "cpu"
            or tensor.nbytes < MIN_MOVED_BYTES
            or not tensor.is_contiguous()
            or tensor.storage_offset() != 0
            or tensor.untyped_storage().nbytes() != tensor.nbytes
            or tensor.requires_grad
        ):
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        chosen.append(tensor)
    if not chosen:
        return 0
    offsets = []
    end = 0
    for tensor in chosen:
        offsets.append(end)
        end += -(-tensor.nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
    arena = huge_page_arena(end)
    storage = arena.untyped_storage()
    base = arena.data_ptr() - storage.data_ptr()  # the arena's offset in its storage, bytes
    for tensor, offset in zip(chosen, offsets):
        arena[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor)
        element = tensor.element_size()
        tensor.set_(storage, (base + offset) // element, tensor.shape, tensor.stride())
    return end


def _tensors_of(value: object) -> list[torch.Tensor]:
    """value itself if a tensor, else the tensors among its attributes (a packed or int8
    weight, an MoE block)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if value is None:
        return []
    names = getattr(type(value), "__slots__", None) or list(getattr(value, "__dict__", {}))
    return [item for name in names if isinstance(item := getattr(value, name, None), torch.Tensor)]


def weight_tensors(model) -> list[torch.Tensor]:
    """The tensors of a loaded model's decoder layers, embedding, final norm and LM head."""
    found: list[torch.Tensor] = []
    for layer in model.layers:
        for name in type(layer).__slots__:
            found += _tensors_of(getattr(layer, name))
    for name in ("embed_tokens", "final_norm", "lm_head"):
        found += _tensors_of(getattr(model, name, None))
    return found


def move_weights_to_huge_pages(model) -> int:
    """Move a loaded (and packed) CPU model's weights into a huge-page arena; returns the bytes
    moved (0 where huge pages are unavailable, the model is not on the CPU, or layers are
    offloaded: those stream through buffers of their own)."""
    if not is_available() or model.device.type != "cpu" or getattr(model, "offload", None):
        return 0
    moved = move_to_huge_pages(weight_tensors(model))
    model._loop_weights = None  # the layer loop's lists are rebuilt over the moved tensors
    logger.info("weights on huge pages: %.1f MiB", moved / 2**20)
    return moved
