"""The compute pool's adapter slots: every layer's LoRA A and B stacks, one row per slot.

Each fused linear of the model (q|k|v, o, gate|up, down) gets one stack pair in the layout of
corral/lora/apply.py; an adapter that does not target a module leaves its part zero.
"""

from __future__ import annotations

import torch

from corral.lora.adapter import module_shapes
from corral.lora.apply import LoRATarget
from corral.lora.weights import AdapterWeights
from corral.model.arch import ModelArch

# Fused linear of the model -> the adapter modules it is made of, in fusion order.
FUSED_TARGETS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


class LoRASlots:
    """max_loras adapters' weights on the compute device; slot_ranks[s] is slot s's rank."""

    def __init__(
        self,
        arch: ModelArch,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.slot_ranks = [0] * max_loras
        shapes = module_shapes(arch)
        self.layers: list[dict[str, LoRATarget]] = []
        for _ in range(arch.num_layers):
            targets = {}
            for fused, modules in FUSED_TARGETS.items():
                in_features = shapes[modules[0]][0]
                offsets = [0]
                for module in modules:
                    offsets.append(offsets[-1] + shapes[module][1])
                a = torch.zeros(
                    max_loras, len(modules) * max_rank, in_features, dtype=dtype, device=device
                )
                b = torch.zeros(max_loras, offsets[-1], max_rank, dtype=dtype, device=device)
                targets[fused] = LoRATarget.create(a, b, offsets)
            self.layers.append(targets)

    def num_bytes(self) -> int:
        return sum(
            t.a.numel() * t.a.element_size() + t.b.numel() * t.b.element_size()
            for layer in self.layers
            for t in layer.values()
        )

    def write(self, slot: int, weights: AdapterWeights) -> None:
        """Copy an adapter into `slot`, zeroing whatever the slot held before."""
        max_rank = self.max_rank
        for index, targets in enumerate(self.layers):
            for fused, modules in FUSED_TARGETS.items():
                target = targets[fused]
                target.a[slot].zero_()
                target.b[slot].zero_()
                for part, module in enumerate(modules):
                    pair = weights.modules.get((index, module))
                    if pair is None:
                        continue
                    a, b = pair
                    rank = a.shape[0]
                    low, high = target.part_offsets[part], target.part_offsets[part + 1]
                    target.a[slot, part * max_rank : part * max_rank + rank].copy_(a)
                    target.b[slot, low:high, :rank].copy_(b)
        self.slot_ranks[slot] = weights.ref.rank
