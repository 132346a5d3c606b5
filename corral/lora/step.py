"""What the model needs to add LoRA deltas in one step: the slots' stacks and the row layout."""

from __future__ import annotations

from typing import NamedTuple

import torch

from corral.lora.apply import LoRATarget, add_lora
from corral.lora.batch import LoRABatch


class LoRAStep(NamedTuple):
    layers: list[dict[str, LoRATarget]]  # per layer: fused linear name -> its stacks
    batch: LoRABatch

    def add(self, layer_index: int, target: str, out: torch.Tensor, x: torch.Tensor) -> None:
        """out += the adapters' delta of linear `target` in layer layer_index, for input x."""
        add_lora(out, x, self.layers[layer_index][target], self.batch)
