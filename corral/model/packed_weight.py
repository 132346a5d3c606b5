"""bf16 weights packed by quads for the CPU few-row kernel (corral/model/kernels/cpu_linear.cpp).

The kernel takes a linear's output rows four at a time (a quad) and walks the four rows' inputs
side by side, 16 at a time. In the checkpoint's layout that is four memory streams 2 * in bytes
apart; packed, each quad's 16-element blocks are interleaved by row, [out / 4, in / 16, 4, 16],
so the walk reads one sequential stream. Within a block the elements are in paired order
(element l at 2l, element 8 + l at 2l + 1), so the kernel widens them to float with bit shifts;
steps of 2-8 rows read this form directly. On a 2-core AVX2 EPYC packed rows stream 1.02-1.42x
faster than plain at one row on SmolLM-135M's shapes (benchmarks/packed_weights.py,
docs/performance.md). The arithmetic is unchanged, so packed and plain weights give the same
bits at any row count.

Packed at load, after quantization and the dispatch tuning, only where the kernel serves every
row count of the model's linears (a CPU without native bf16 matrix instructions, so no call
falls back to F.linear) and the build reads the layout: the dense layers' q|k|v, o, gate|up and
down, and the LM head. A tied LM head packs the embedding table itself: lookups read rows out
of the packed form (PackedWeight.__getitem__), so no second copy is held. Not packed: MoE
experts, tensor-parallel shards, offloaded layers, int8 weights, shapes whose out is not a
multiple of 4 or in of 16. CORRAL_PACK_WEIGHTS=0 keeps the plain layout.
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
QUAD_ROWS = 4
BLOCK_COLUMNS = 16


class PackedWeight:
    """A bf16 weight [out, in] stored as [out / 4, in / 16, 4, 16] (see the module doc)."""

    __slots__ = ("data",)

    def __init__(self, data: torch.Tensor) -> None:
        if data.dim() != 4 or tuple(data.shape[2:]) != (QUAD_ROWS, BLOCK_COLUMNS):
            raise ValueError(f"packed data must be [quads, blocks, 4, 16], got {tuple(data.shape)}")
        self.data = data.contiguous()

    @staticmethod
    def can_pack(weight: torch.Tensor) -> bool:
        """Whether weight's shape packs: 2-D, out a multiple of 4 and in of 16."""
        return (
            weight.dim() == 2
            and weight.shape[0] % QUAD_ROWS == 0
            and weight.shape[1] % BLOCK_COLUMNS == 0
        )

    @classmethod
    def pack(cls, weight: torch.Tensor) -> PackedWeight:
        """The packed form of weight [out, in] (a copy)."""
        if not cls.can_pack(weight):
            raise ValueError(
                f"a weight of shape {tuple(weight.shape)} does not pack: out must be a multiple "
                f"of {QUAD_ROWS} and in of {BLOCK_COLUMNS}"
            )
        out_features, in_features = weight.shape
        # [quads, 4, blocks, 2, 8] -> [quads, blocks, 4, 8, 2]: each block in paired order.
        half = BLOCK_COLUMNS // 2
        quads = weight.reshape(
            out_features // QUAD_ROWS, QUAD_ROWS, in_features // BLOCK_COLUMNS, 2, half
        )
        packed = quads.permute(0, 2, 1, 4, 3).contiguous()
        return cls(packed.reshape(packed.shape[0], packed.shape[1], QUAD_ROWS, BLOCK_COLUMNS))

    @property
    def shape(self) -> torch.Size:
        quads, blocks = self.data.shape[:2]
        return torch.Size((quads * QUAD_ROWS, blocks * BLOCK_COLUMNS))

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
        quads, blocks = self.data.shape[:2]
        paired = self.data.reshape(quads, blocks, QUAD_ROWS, BLOCK_COLUMNS // 2, 2)
        return paired.permute(0, 2, 1, 4, 3).reshape(self.shape)

    def __getitem__(self, row_ids: torch.Tensor) -> torch.Tensor:
        """Rows row_ids of the weight (an embedding lookup): [*row_ids.shape, in]."""
        flat = row_ids.reshape(-1)
        kernels = cpu_kernels() if self.data.device.type == "cpu" else None
        if kernels is not None and flat.dtype == torch.int64:
            rows = kernels.packed_rows(self.data, flat)  # one call: a decode step's lookups
        else:
            # Advanced indices on dims 0 and 2 around a slice: [n, in / 16, 16], each block in
            # paired order, then put back in column order.
            paired = self.data[flat // QUAD_ROWS, :, flat % QUAD_ROWS, :]
            rows = paired.reshape(flat.shape[0], -1, BLOCK_COLUMNS // 2, 2).transpose(2, 3)
        return rows.reshape(*row_ids.shape, self.shape[1])

    def __repr__(self) -> str:
        return f"PackedWeight(shape={tuple(self.shape)}, dtype={self.dtype})"


def packing_applies(model: LlamaFamilyModel, max_kernel_rows: int, unlimited: int) -> bool:
    """Whether this model's weights should be packed (see the module doc for the rule)."""
    if os.environ.get("CORRAL_PACK_WEIGHTS", "1") == "0":
        return False
    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return False
    if max_kernel_rows < unlimited or model.all_reduce is not None or model.offload is not None:
        return False
    kernels = cpu_kernels()
    return kernels is not None and bool(kernels.packed_weights_supported())


def pack_model_weights(model: LlamaFamilyModel) -> int:
    """Replace the model's packable dense weights (and LM head) by PackedWeight in place; returns
    how many bytes were packed. The caller checks packing_applies first."""
    packed_bytes = 0

    def packed(weight):
        nonlocal packed_bytes
        if type(weight) is not torch.Tensor or not PackedWeight.can_pack(weight):
            return weight
        packed_bytes += weight.nbytes
        return PackedWeight.pack(weight)

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
    logger.info("packed %.1f MiB of bf16 weights by quads for the CPU kernel", packed_bytes / 2**20)
    return packed_bytes
