"""bf16 weights packed for corral's CPU linear kernels, in one of two layouts.

**Panels** (cpu_panel_linear.cpp), for CPUs without native bf16 matrix instructions. The kernel
computes a linear in broadcast form: 64 outputs at a time (a panel), one input k at a time,
x[r][k] broadcast against the 64 weights of input k. Packed, a panel's weights are [in, 64], so
the kernel reads one sequential stream per panel: [out / 64, in, 64]. Within each input's 64 the
four 16-output sub-panels are in paired order (output 16s + l at 2l, output 16s + 8 + l at
2l + 1), so the kernel widens a 32-byte load to two float vectors with a shift and a mask. Every
output is one FMA chain over the inputs in order, whatever the number of rows, so a row's bits
do not depend on its batch. Against the quad layout it replaced (dot products over 16-element
blocks), the same-process A/B on a 2-core AVX2 EPYC ran 1.2-1.7x faster at 2-32 rows and at
least as fast at one (docs/performance.md, "Broadcast-form panels"). Packed only where the
kernel serves every row count of the model's linears (no call falls back to F.linear).

**Tiles** (cpu_amx_linear.cpp), for CPUs with AMX (Sapphire Rapids and later Xeons):
[out / 16, in / 32, 16, 16, 2], for each block of 16 outputs and 32 inputs the 1 KiB operand
that `tdpbf16ps` reads, row t holding the 16 outputs' weights of inputs 2t and 2t + 1 side by
side. One kernel serves every row count (decode rows and prefill chunks alike), and a row's
bits do not depend on its batch. Preferred over panels and over F.linear wherever the CPU has
AMX and the process may use it.

Packed at load, after quantization and the dispatch tuning: the dense layers' q|k|v, o, gate|up
and down, and the LM head. A tied LM head packs the embedding table itself: lookups read rows
out of the packed form (PackedWeight.__getitem__), so no second copy is held. Not packed: MoE
experts, tensor-parallel shards, offloaded layers, int8 weights, shapes the layout does not
divide (panels: out a multiple of 64; tiles: out of 16 and in of 32). The plain layout's kernel
sums in another order: packed and plain weights agree to rounding, not to the bit.
CORRAL_PACK_WEIGHTS=0 keeps the plain layout.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from corral.model.kernels import cpu_kernels

if TYPE_CHECKING:
    from corral.model.models.llama import LlamaFamilyModel

logger = logging.getLogger(__name__)

PACKED_LAYER_WEIGHTS = ("qkv", "o", "gate_up", "down")
PANEL_OUTPUTS = 64
SUB_PANEL_OUTPUTS = 16
_NUM_SUB_PANELS = PANEL_OUTPUTS // SUB_PANEL_OUTPUTS
_HALF = SUB_PANEL_OUTPUTS // 2
TILE_OUTPUTS = 16
TILE_INPUTS = 32
LAYOUTS = ("panels", "tiles")


class PackedWeight:
    """A bf16 weight [out, in] stored as panels [out / 64, in, 64] or AMX tiles
    [out / 16, in / 32, 16, 16, 2] (see the module doc)."""

    __slots__ = ("data",)

    def __init__(self, data: torch.Tensor) -> None:
        panels = data.dim() == 3 and data.shape[2] == PANEL_OUTPUTS
        tiles = data.dim() == 5 and tuple(data.shape[2:]) == (TILE_INPUTS // 2, TILE_OUTPUTS, 2)
        if not (panels or tiles):
            raise ValueError(
                "packed data must be panels [out / 64, in, 64] or tiles "
                f"[out / 16, in / 32, 16, 16, 2], got {tuple(data.shape)}"
            )
        self.data = data.contiguous()

    @property
    def layout(self) -> str:
        return "tiles" if self.data.dim() == 5 else "panels"

    @staticmethod
    def can_pack(weight: torch.Tensor, layout: str = "panels") -> bool:
        """Whether weight's shape packs: 2-D; panels: out a multiple of 64; tiles: out of 16,
        in of 32."""
        if weight.dim() != 2 or weight.shape[1] == 0:
            return False
        if layout == "tiles":
            return weight.shape[0] % TILE_OUTPUTS == 0 and weight.shape[1] % TILE_INPUTS == 0
        return weight.shape[0] % PANEL_OUTPUTS == 0

    @classmethod
    def pack(cls, weight: torch.Tensor, layout: str = "panels") -> PackedWeight:
        """The packed form of weight [out, in] (a copy)."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown packed layout {layout!r}: one of {LAYOUTS}")
        if not cls.can_pack(weight, layout):
            need = (
                f"out a multiple of {TILE_OUTPUTS} and in of {TILE_INPUTS}"
                if layout == "tiles"
                else f"out a multiple of {PANEL_OUTPUTS}"
            )
            raise ValueError(
                f"a weight of shape {tuple(weight.shape)} does not pack as {layout}: {need}"
            )
        out_features, in_features = weight.shape
        if layout == "tiles":
            # [blocks, 16 outputs, input tiles, 16 pairs, 2] -> [blocks, input tiles, pairs,
            # outputs, 2]: input 32 kb + 2 t + e of output 16 b + n at [b, kb, t, n, e].
            split = weight.reshape(
                out_features // TILE_OUTPUTS,
                TILE_OUTPUTS,
                in_features // TILE_INPUTS,
                TILE_INPUTS // 2,
                2,
            )
            return cls(split.permute(0, 2, 3, 1, 4).contiguous())
        # [panels, sub-panels, halves, 8, in] -> [panels, in, sub-panels, 8, halves]: output
        # 16s + 8h + l of a panel at 16s + 2l + h of each input's 64.
        split = weight.reshape(
            out_features // PANEL_OUTPUTS, _NUM_SUB_PANELS, 2, _HALF, in_features
        )
        packed = split.permute(0, 4, 1, 3, 2).contiguous()
        return cls(packed.reshape(packed.shape[0], in_features, PANEL_OUTPUTS))

    @property
    def shape(self) -> torch.Size:
        if self.layout == "tiles":
            num_blocks, num_input_tiles = self.data.shape[:2]
            return torch.Size((num_blocks * TILE_OUTPUTS, num_input_tiles * TILE_INPUTS))
        num_panels, in_features = self.data.shape[:2]
        return torch.Size((num_panels * PANEL_OUTPUTS, in_features))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def unpack(self) -> torch.Tensor:
        """The weight in the plain [out, in] layout (a copy)."""
        if self.layout == "tiles":
            return self.data.permute(0, 3, 1, 2, 4).reshape(self.shape)
        num_panels, in_features = self.data.shape[:2]
        split = self.data.reshape(num_panels, in_features, _NUM_SUB_PANELS, _HALF, 2)
        return split.permute(0, 2, 4, 3, 1).reshape(self.shape)

    def __getitem__(self, row_ids: torch.Tensor) -> torch.Tensor:
        """Rows row_ids of the weight (an embedding lookup): [*row_ids.shape, in]."""
        flat = row_ids.reshape(-1)
        kernels = cpu_kernels() if self.data.device.type == "cpu" else None
        if kernels is not None and flat.dtype == torch.int64:
            rows = kernels.packed_rows(self.data, flat)  # one call: a decode step's lookups
        elif self.layout == "tiles":
            # Advanced indices on dims 0 and 3 around slices: [n, in / 32, 16, 2].
            rows = self.data[flat // TILE_OUTPUTS, :, :, flat % TILE_OUTPUTS]
        else:
            # Advanced indices on dims 0 and 2 around a slice: [n, in].
            j = flat % PANEL_OUTPUTS
            slot = (
                SUB_PANEL_OUTPUTS * (j // SUB_PANEL_OUTPUTS)
                + 2 * (j % _HALF)
                + (j % SUB_PANEL_OUTPUTS) // _HALF
            )
            rows = self.data[flat // PANEL_OUTPUTS, :, slot]
        return rows.reshape(*row_ids.shape, self.shape[1])

    def __repr__(self) -> str:
        return f"PackedWeight(shape={tuple(self.shape)}, dtype={self.dtype}, {self.layout})"


def build_layout() -> str | None:
    """The packed layout this CPU's kernel build multiplies bf16 weights in: AMX tiles where the
    CPU has AMX, else panels where the build reads them, else None."""
    kernels = cpu_kernels()
    if kernels is None:
        return None
    if kernels.tiles_supported():
        return "tiles"
    return "panels" if kernels.packed_weights_supported() else None


def packing_layout(model: LlamaFamilyModel, max_kernel_rows: int, unlimited: int) -> str | None:
    """The layout this model's weights pack in, or None (see the module doc for the rule)."""
    if os.environ.get("CORRAL_PACK_WEIGHTS", "1") == "0":
        return None
    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return None
    if model.all_reduce is not None or model.offload is not None:
        return None
    layout = build_layout()
    # Panels only where the kernel serves every row count; tiles serve every row count.
    if layout == "panels" and max_kernel_rows < unlimited:
        return None
    return layout


def pack_model_weights(model: LlamaFamilyModel, layout: str = "panels") -> int:
    """Replace the model's packable dense weights (and LM head) by PackedWeight in place; returns
    how many bytes were packed. The caller picks the layout with packing_layout first."""
    packed_bytes = 0

    def packed(weight):
        nonlocal packed_bytes
        if type(weight) is not torch.Tensor or not PackedWeight.can_pack(weight, layout):
            return weight
        packed_bytes += weight.nbytes
        return PackedWeight.pack(weight, layout)

    for layer in model.layers:
        for name in PACKED_LAYER_WEIGHTS:
            weight = getattr(layer, name, None)
            if weight is not None:
                setattr(layer, name, packed(weight))
    if model.lm_head is not None:
        tied = model.lm_head is model.embed_tokens
        model.lm_head = packed(model.lm_head)
        if tied and isinstance(model.lm_head, PackedWeight):
            model.embed_tokens = model.lm_head  # lookups read the packed table
    model._loop_weights = None  # the layer loop's lists are rebuilt from the packed weights
    mib = packed_bytes / 2**20
    logger.info("packed %.1f MiB of bf16 weights as %s for the CPU kernel", mib, layout)
    return packed_bytes
