"""One step's LoRA layout: which rows of the batch use which adapter slot, grouped by slot.

Rows of base-model requests are in no segment. Segment g covers rows[seg_starts[g]:
seg_starts[g + 1]] (batch row indices, any order), all served by adapter slot seg_slots[g],
whose rank is seg_ranks[g].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class LoRABatch:
    rows: torch.Tensor  # int64 [num_rows_with_adapter]
    seg_starts: torch.Tensor  # int64 [num_segments + 1]
    seg_slots: torch.Tensor  # int64 [num_segments]
    seg_ranks: torch.Tensor  # int64 [num_segments]
    # The same as Python lists, for the PyTorch path's loop.
    segments: tuple[tuple[int, int, int, int], ...]  # (start, end, slot, rank)

    @classmethod
    def from_row_slots(
        cls, row_slots: list[int], slot_ranks: list[int], device: torch.device
    ) -> LoRABatch | None:
        """row_slots[i]: the adapter slot of batch row i (-1: base model). None when no row
        uses an adapter."""
        by_slot: dict[int, list[int]] = {}
        for row, slot in enumerate(row_slots):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(row)
        if not by_slot:
            return None
        rows: list[int] = []
        starts = [0]
        segments = []
        for slot in sorted(by_slot):
            rows.extend(by_slot[slot])
            segments.append((starts[-1], len(rows), slot, slot_ranks[slot]))
            starts.append(len(rows))
        return cls(
            rows=torch.tensor(rows, dtype=torch.int64, device=device),
            seg_starts=torch.tensor(starts, dtype=torch.int64, device=device),
            seg_slots=torch.tensor([s[2] for s in segments], dtype=torch.int64, device=device),
            seg_ranks=torch.tensor([s[3] for s in segments], dtype=torch.int64, device=device),
            segments=tuple(segments),
        )
