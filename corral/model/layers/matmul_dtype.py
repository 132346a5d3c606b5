"""The dtype attention's batched matmuls run in on this device."""

from __future__ import annotations

import torch

from corral.model.cpu_features import has_native_bf16_matmul


def attention_matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """dtype, except bfloat16 on a CPU without AVX512-BF16 or AMX: there torch's bfloat16
    batched matmuls run 50-100x slower than float32 ones (measured on an AVX2 EPYC: 0.3-1.2
    against 40-75 GFLOP/s for attention's shapes), so attention computes in float32."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not has_native_bf16_matmul():
        return torch.float32
    return dtype
