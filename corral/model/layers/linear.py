"""Dense layers as plain weight holders; `linear` is the one matmul entry point of the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.model.kernels import cpu_kernels
from corral.model.layers.linear_dispatch import (
    UNLIMITED,
    choose_max_kernel_rows,
    choose_tile_form,
    guessed_max_kernel_rows,
)
from corral.model.packed_weight import PackedWeight, pack_model_weights, packing_layout
from corral.model.quantization import Int8Weight, int8_linear, pack_int8_weights

# Up to this many rows, bfloat16 CPU linears use corral's kernel, beyond them F.linear: guessed
# from the CPU's flags until tune_linear_dispatch measures it for the loaded model.
_MAX_KERNEL_ROWS = guessed_max_kernel_rows()


def tune_linear_dispatch(model) -> None:
    """Time the kernel against F.linear on the model's shapes and set the row limit (bf16 CPU
    models only; once per process, at start-up; corral/model/layers/linear_dispatch.py)."""
    global _MAX_KERNEL_ROWS
    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return
    kernels = cpu_kernels()
    if kernels is None:
        return
    _MAX_KERNEL_ROWS = choose_max_kernel_rows(
        model, lambda x, w: kernels.few_row_linear(x, w, None)
    )
    if kernels.tiles_supported() and not kernels.amx_tiles_supported():
        choose_tile_form(model, kernels)  # AVX-512 bf16 without AMX: dot products or FMAs


def pack_weights_for_kernel(model) -> None:
    """Pack the model's bf16 linear weights as AMX tiles where the CPU has them, else in panels
    where every row count of its linears runs on the kernel (after tune_linear_dispatch and any
    offloading; corral/model/packed_weight.py), and its per-channel int8 weights for the int8
    panel kernel (corral/model/quantization.py)."""
    layout = packing_layout(model, _MAX_KERNEL_ROWS, UNLIMITED)
    if layout is not None:
        pack_model_weights(model, layout)
    pack_int8_weights(model)


def uses_row_kernel(num_rows: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a dense linear of num_rows rows runs on corral's few-row kernel (bf16 on CPU, up
    to the measured row limit) rather than F.linear (when the kernels are built)."""
    return num_rows <= _MAX_KERNEL_ROWS and dtype == torch.bfloat16 and device.type == "cpu"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [num_tokens, in] @ weight[out, in].T (+ bias)."""
    if isinstance(weight, Int8Weight):  # --quantization int8 (corral/model/quantization.py)
        return int8_linear(x, weight, bias)
    if isinstance(weight, PackedWeight):  # corral/model/packed_weight.py
        kernels = cpu_kernels()
        # Tiles serve every row count of bf16 CPU rows; panels are packed only where the kernel
        # serves every row count (uses_row_kernel also checks x's dtype and device).
        tiles = weight.layout == "tiles" and x.dtype == torch.bfloat16 and x.device.type == "cpu"
        if kernels is not None and (tiles or uses_row_kernel(x.shape[0], x.dtype, x.device)):
            return kernels.few_row_linear(x.contiguous(), weight.data, bias)
        return F.linear(x, weight.unpack(), bias)
    if uses_row_kernel(x.shape[0], x.dtype, x.device):
        kernels = cpu_kernels()
        if kernels is not None:
            return kernels.few_row_linear(x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)


def linear_silu_and_mul(
    kernels, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """silu(gate) * up of a gate/up projection (weight [2 * intermediate, in], the gate's rows
    first) with the CPU kernels: one pass over AMX-tiled weights (the products never stored),
    else `linear` then the kernels' silu_and_mul. The same bits either way."""
    if (
        isinstance(weight, PackedWeight)
        and weight.layout == "tiles"
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
    ):
        return kernels.few_row_linear_silu(x.contiguous(), weight.data, bias)
    return kernels.silu_and_mul(linear(x, weight, bias))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the reduction in float32 and the scale in the model dtype (as transformers)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    return weight * normed
