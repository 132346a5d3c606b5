"""What the model needs to add LoRA deltas in one step: the slots' stacks and the row layout."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from corral.lora.apply import LoRATarget, add_lora
from corral.lora.batch import LoRABatch


class LoRAStep(NamedTuple):
    layers: list[dict[str, LoRATarget]]  # per layer: fused linear name -> its stacks
    batch: LoRABatch

    def add(self, layer_index: int, target: str, out: torch.Tensor, x: torch.Tensor) -> None:
        """out += the adapters' delta of linear `target` in layer layer_index, for input x."""
        add_lora(out, x, self.layers[layer_index][target], self.batch)


def lora_step(
    adapters: Any, lora_slots: list[int | None], row_ranges: list[tuple[int, int]]
) -> LoRAStep | None:
    """A step's adapter layout: each scheduled request's adapter slot (None: the base model)
    over its rows [row_start, row_end); None when no request uses an adapter. adapters: the
    executor's AdapterMemory (or None without LoRA)."""
    if adapters is None or all(slot is None for slot in lora_slots):
        return None
    row_slots = [-1] * row_ranges[-1][1]
    for slot, (row_start, row_end) in zip(lora_slots, row_ranges):
        if slot is not None:
            row_slots[row_start:row_end] = [slot] * (row_end - row_start)
    batch = adapters.batch(row_slots)
    return None if batch is None else LoRAStep(adapters.slots.layers, batch)
