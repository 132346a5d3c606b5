"""Dense layers as plain weight holders; `linear` is the one matmul entry point of the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from corral.model.cpu_features import has_native_bf16_matmul
from corral.model.kernels import cpu_kernels
from corral.model.quantization import Int8Weight, int8_linear

# Up to this many rows, bfloat16 CPU linears use corral's kernel: a couple where the CPU
# multiplies bf16 natively (oneDNN is faster beyond), every size where it does not (the kernel
# beats F.linear 2-5x at 1 to 256 rows there: benchmarks/linear_rows.py).
_MAX_KERNEL_ROWS = 2 if has_native_bf16_matmul() else 1 << 30


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [num_tokens, in] @ weight[out, in].T (+ bias)."""
    if isinstance(weight, Int8Weight):  # --quantization int8 (corral/model/quantization.py)
        return int8_linear(x, weight, bias)
    if x.shape[0] <= _MAX_KERNEL_ROWS and x.dtype == torch.bfloat16 and x.device.type == "cpu":
        kernels = cpu_kernels()
        if kernels is not None:
            return kernels.few_row_linear(x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the reduction in float32 and the scale in the model dtype (as transformers)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)
    return weight * normed
