"""KV cache quantization: int8 or fp8 (e4m3) values with one float16 scale per token and head."""

from __future__ import annotations

import torch

_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [num_tokens, num_heads, head_dim] -> (values in dtype, scales float16 [tokens, heads]);
    x ~= values * scale. The scale is rounded to float16 before dividing, so that the stored
    pair reproduces x up to the value rounding alone."""
    qmax = _QMAX[dtype]
    absmax = x.abs().amax(dim=-1).float()
    scale = (absmax / qmax).clamp_(min=1e-8).to(torch.float16)
    scaled = x.float() / scale.float().unsqueeze(-1)
    if dtype == torch.int8:
        values = scaled.round_().clamp_(-qmax, qmax).to(torch.int8)
    else:
        values = scaled.clamp_(-qmax, qmax).to(dtype)
    return values, scale


def dequantize_kv(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """values [..., head_dim] and scale [...] back to dtype."""
    return (values.float() * scale.float().unsqueeze(-1)).to(dtype)


def is_quantized(dtype: torch.dtype) -> bool:
    return dtype in _QMAX


def raw_view(x: torch.Tensor) -> torch.Tensor:
    """x itself, or for float8 its bytes as uint8 (CPU index_copy_/index_select lack float8)."""
    return x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x
