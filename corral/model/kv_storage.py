"""KVStorage: the KV cache tensors of one executor, and the copies between tiers.

Device layout: values [num_layers, 2 (key, value), num_blocks, block_elements], each block viewed
per layer as keys [num_kv_heads, head_dim, block_size] and values [block_size, num_kv_heads,
head_dim] (see LayerKVCache); float16 scales [num_layers, 2, num_blocks, block_size, num_kv_heads]
when the values are quantized. A block's data across all layers moves with one indexed copy. The
host tier holds the same per-block data in slots [num_host_slots, num_layers, 2, ...].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.core.kv_transfer import DiskReadResult, KVTransferPlan
from corral.memory_budget import parse_memory_budget
from corral.model.device import free_memory_bytes
from corral.model.huge_pages import huge_page_zeros
from corral.model.kv_disk import DiskKVStore
from corral.model.layers.attention import LayerKVCache
from corral.model.layers.kv_quant import is_quantized, raw_view

KV_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn}


@dataclass(frozen=True, slots=True)
class KVSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype  # stored values
    compute_dtype: torch.dtype  # the model's dtype

    @property
    def quantized(self) -> bool:
        return is_quantized(self.dtype)

    @property
    def block_elements(self) -> int:
        return self.block_size * self.num_kv_heads * self.head_dim

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.block_elements)

    def bytes_per_block(self) -> int:
        elements = self.num_layers * 2 * self.block_size * self.num_kv_heads
        value_bytes = elements * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return value_bytes + (elements * 2 if self.quantized else 0)


def kv_storage_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    if name == "auto":
        return model_dtype
    if name not in KV_DTYPES:
        raise ValueError(f"kv_cache_dtype {name!r} is not one of auto, int8, fp8")
    return KV_DTYPES[name]


class KVStorage:
    def __init__(
        self,
        spec: KVSpec,
        num_blocks: int,
        device: torch.device,
        num_host_slots: int = 0,
        disk: DiskKVStore | None = None,
        huge_pages: bool = False,
    ) -> None:
        self.spec = spec
        self.device = device
        layers, bs, heads, dim = spec.num_layers, spec.block_size, spec.num_kv_heads, spec.head_dim
        # Zeroed, not empty: padded decode slots are masked, but 0 * NaN would still poison them.
        # On 2 MiB pages where asked and the kernel grants them (corral/model/huge_pages.py): a
        # request's blocks lie apart in the pool.
        shape = (layers, 2, num_blocks, spec.block_elements)
        if huge_pages and device.type == "cpu":
            self.values = huge_page_zeros(shape, spec.dtype)
        else:
            self.values = torch.zeros(shape, dtype=spec.dtype, device=device)
        self.scales = (
            torch.zeros((layers, 2, num_blocks, bs, heads), dtype=torch.float16, device=device)
            if spec.quantized
            else None
        )
        self.layer_caches = [
            LayerKVCache(
                self.values[layer, 0].view(num_blocks, heads, dim, bs),
                self.values[layer, 1].view(num_blocks, bs, heads, dim),
                None if self.scales is None else self.scales[layer, 0],
                None if self.scales is None else self.scales[layer, 1],
            )
            for layer in range(layers)
        ]
        pin = device.type == "cuda"
        self.host_values = (
            torch.zeros((num_host_slots, *spec.block_shape), dtype=spec.dtype, pin_memory=pin)
            if num_host_slots
            else None
        )
        self.host_scales = (
            torch.zeros((num_host_slots, layers, 2, bs, heads), dtype=torch.float16, pin_memory=pin)
            if num_host_slots and spec.quantized
            else None
        )
        self.disk = disk
        # Called with each non-empty plan before it runs here (tensor-parallel workers copy
        # their own KV heads alike: corral/model/tp_group.py).
        self.mirror = None

    # ----- the plan ------------------------------------------------------------------------

    def apply(self, plan: KVTransferPlan | None) -> None:
        """Run one step's copies in the order the plan's contract gives."""
        if not plan:
            return
        if self.mirror is not None:
            self.mirror(plan)
        if self.disk is not None:
            for slot, block_hash in plan.disk_writes:
                self.disk.write(block_hash, self._slot_bytes(slot))
        if plan.saves:
            blocks, slots = zip(*plan.saves)
            self._device_to_host(list(blocks), list(slots))
        if plan.loads:
            slots, blocks = zip(*plan.loads)
            self._host_to_device(list(slots), list(blocks))
        if self.disk is not None:
            for block_hash, slot in plan.disk_reads:
                self.disk.read(block_hash, slot, self._store_slot_bytes)
            for block_hash in plan.disk_deletes:
                self.disk.delete(block_hash)

    def finished_disk_reads(self) -> list[DiskReadResult]:
        return self.disk.poll() if self.disk is not None else []

    # ----- copies ----------------------------------------------------------------------------

    def _device_to_host(self, blocks: list[int], slots: list[int]) -> None:
        index = torch.tensor(blocks, device=self.device)
        host_index = torch.tensor(slots)
        gathered = raw_view(self.values).index_select(2, index).movedim(2, 0).cpu()
        raw_view(self.host_values).index_copy_(0, host_index, gathered)
        if self.scales is not None:
            scales = self.scales.index_select(2, index).movedim(2, 0).cpu()
            self.host_scales.index_copy_(0, host_index, scales)

    def _host_to_device(self, slots: list[int], blocks: list[int]) -> None:
        index = torch.tensor(blocks, device=self.device)
        host_index = torch.tensor(slots)
        data = raw_view(self.host_values).index_select(0, host_index).movedim(0, 2)
        raw_view(self.values).index_copy_(2, index, data.to(self.device))
        if self.scales is not None:
            scales = self.host_scales.index_select(0, host_index).movedim(0, 2).to(self.device)
            self.scales.index_copy_(2, index, scales)

    def payload_nbytes(self) -> int:
        return self.spec.bytes_per_block()

    def _slot_bytes(self, slot: int) -> bytes:
        parts = [self.host_values[slot].contiguous().view(torch.uint8).numpy().tobytes()]
        if self.host_scales is not None:
            parts.append(self.host_scales[slot].contiguous().view(torch.uint8).numpy().tobytes())
        return b"".join(parts)

    def _store_slot_bytes(self, slot: int, payload: bytes) -> None:
        raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        values = self.host_values[slot]
        value_bytes = values.numel() * values.element_size()
        values.view(-1).view(torch.uint8).copy_(raw[:value_bytes])
        if self.host_scales is not None:
            self.host_scales[slot].view(-1).view(torch.uint8).copy_(raw[value_bytes:])

    # ----- device blocks as bytes (KV transfer between engines) -----------------------------

    def read_blocks(self, block_ids: list[int]) -> bytes:
        """The blocks' data across all layers: values [n, layers, 2, elements], then the
        scales [n, layers, 2, block_size, heads] when quantized. Safe from another thread
        while the blocks are referenced (nobody writes them)."""
        index = torch.tensor(block_ids, device=self.device)
        parts = [raw_view(self.values).index_select(2, index).movedim(2, 0).contiguous()]
        if self.scales is not None:
            parts.append(self.scales.index_select(2, index).movedim(2, 0).contiguous())
        return b"".join(part.cpu().view(torch.uint8).numpy().tobytes() for part in parts)

    def blocks_nbytes(self, num_blocks: int) -> int:
        return num_blocks * self.spec.bytes_per_block()

    def write_blocks(self, block_ids: list[int], payload: bytes) -> None:
        """Write read_blocks' bytes of len(block_ids) blocks into these blocks."""
        if len(payload) != self.blocks_nbytes(len(block_ids)):
            raise ValueError(
                f"{len(payload)} bytes for {len(block_ids)} blocks of "
                f"{self.spec.bytes_per_block()} bytes"
            )
        index = torch.tensor(block_ids, device=self.device)
        raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        values = raw_view(self.values)
        shape = (len(block_ids), *values.shape[:2], values.shape[3])
        value_bytes = values.element_size() * len(block_ids) * values[:, :, 0].numel()
        data = raw[:value_bytes].view(values.dtype).view(shape).movedim(0, 2)
        values.index_copy_(2, index, data.to(self.device))
        if self.scales is not None:
            scale_shape = (len(block_ids), *self.scales.shape[:2], *self.scales.shape[3:])
            scales = raw[value_bytes:].view(torch.float16).view(scale_shape).movedim(0, 2)
            self.scales.index_copy_(2, index, scales.to(self.device))

    def flush(self) -> None:
        if self.disk is not None:
            self.disk.flush()


def num_blocks_from_budget(
    budget: str | float | None, device: torch.device, bytes_per_block: int
) -> int:
    """KV blocks that fit the budget: a fraction of the device's free memory (<= 1) or bytes
    (None: 0.9 on CUDA, 0.2 on CPU). ValueError when not even one block fits."""
    value = parse_memory_budget(
        budget if budget is not None else (0.9 if device.type == "cuda" else 0.2)
    )
    num_bytes = value * free_memory_bytes(device) if value <= 1 else value
    num_blocks = int(num_bytes // bytes_per_block)
    if num_blocks < 1:
        raise ValueError(
            f"kv cache memory {budget!r} ({int(num_bytes)} bytes) is less than one block "
            f"({bytes_per_block} bytes)"
        )
    return num_blocks
