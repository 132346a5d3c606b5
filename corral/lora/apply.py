"""The LoRA delta of one linear for a mixed batch: out[rows] += B_slot (A_slot x) per segment.

A target is one fused linear of a layer (q|k|v, o, gate|up, down) holding every slot's adapter:
  a [num_slots, num_parts * max_rank, in_features]: part p's rank rows at [p * max_rank, ... + r)
  b [num_slots, out_features, max_rank]: output rows of part p read only that part's rank rows;
    the adapter's scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) is folded into b.
Padding rows and columns (beyond an adapter's rank, or parts it does not target) are zero.
One shrink and one expand per segment: the Punica / S-LoRA grouping, never a merged weight.

add_lora runs all segments in one call of the C++ kernel (corral/model/kernels/cpu_lora.cpp) on
the CPU when the kernels are built, else add_lora_reference, a loop of PyTorch ops per segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.lora.batch import LoRABatch
from corral.model.kernels import cpu_kernels


@dataclass(frozen=True, slots=True)
class LoRATarget:
    """One fused linear's stacks; part p owns output columns [offsets[p], offsets[p + 1])."""

    a: torch.Tensor  # [num_slots, num_parts * max_rank, in_features]
    b: torch.Tensor  # [num_slots, out_features, max_rank]
    part_offsets: tuple[int, ...]  # offsets: [0, ..., out_features], one more than the parts
    part_offsets_tensor: torch.Tensor  # the same, int64 on the CPU, for the kernel

    @classmethod
    def create(cls, a: torch.Tensor, b: torch.Tensor, part_offsets: list[int]) -> LoRATarget:
        offsets = tuple(part_offsets)
        return cls(a, b, offsets, torch.tensor(offsets, dtype=torch.int64))


def add_lora(out: torch.Tensor, x: torch.Tensor, target: LoRATarget, batch: LoRABatch) -> None:
    """out [num_rows, out_features] += the LoRA delta of x [num_rows, in_features], in place."""
    kernels = cpu_kernels() if out.device.type == "cpu" and out.is_contiguous() else None
    if kernels is None:
        add_lora_reference(out, x, target.a, target.b, list(target.part_offsets), batch)
        return
    kernels.lora_shrink_expand(
        out,
        x.contiguous(),
        target.a,
        target.b,
        target.part_offsets_tensor,
        batch.rows,
        batch.seg_starts,
        batch.seg_slots,
        batch.seg_ranks,
    )


def add_lora_reference(
    out: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    part_offsets: list[int] | tuple[int, ...],
    batch: LoRABatch,
) -> None:
    """out [num_rows, out_features] += the LoRA delta of x [num_rows, in_features], in place.

    PyTorch ops only (any device); accumulates in float32, adds once in out's dtype."""
    max_rank = b.shape[2]
    for start, end, slot, rank in batch.segments:
        rows = batch.rows[start:end]
        xs = x.index_select(0, rows).float()
        delta = torch.empty(end - start, out.shape[1], dtype=torch.float32, device=out.device)
        for part in range(len(part_offsets) - 1):
            low, high = part_offsets[part], part_offsets[part + 1]
            a_part = a[slot, part * max_rank : part * max_rank + rank].float()
            shrunk = xs @ a_part.T  # [rows, rank]
            delta[:, low:high] = shrunk @ b[slot, low:high, :rank].float().T
        out.index_add_(0, rows, delta.to(out.dtype))
