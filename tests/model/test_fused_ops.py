"""The fused CPU ops against the PyTorch ops they replace (same rounding points)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corral.model.kernels import cpu_kernels
from corral.model.layers.linear import rms_norm
from corral.model.layers.rotary import RotaryEmbedding


@pytest.fixture(scope="module")
def kernels():
    module = cpu_kernels()
    if module is None:
        pytest.skip("CPU kernels unavailable")
    return module


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of the dtype's resolution at each value."""
    resolution = torch.finfo(a.dtype).eps * b.float().abs().clamp(min=1e-3)
    return float(((a.float() - b.float()).abs() / resolution).max())


def max_ulps(dtype: torch.dtype) -> float:
    """bf16: the same rounding points give at most one ulp; float32 differs by a few (other
    exp and summation order)."""
    return 1.0 if dtype == torch.bfloat16 else 4.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_and_without_residual(kernels, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=generator).to(dtype)
    residual = torch.randn(5, 96, generator=generator).to(dtype)
    weight = torch.randn(96, generator=generator).to(dtype)
    assert ulps(kernels.rms_norm(x, weight, 1e-6, None), rms_norm(x, weight, 1e-6)) <= max_ulps(
        dtype
    )
    expected_residual = residual + x
    expected = rms_norm(expected_residual, weight, 1e-6)
    in_place = residual.clone()
    got = kernels.rms_norm(x, weight, 1e-6, in_place)
    assert torch.equal(in_place, expected_residual)
    assert ulps(got, expected) <= max_ulps(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_in_place_matches(kernels, dtype):
    heads, kv_heads, head_dim = 4, 2, 16
    rotary = RotaryEmbedding(head_dim, 64, 10000.0, None, dtype, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    qkv = torch.randn(3, (heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    positions = torch.tensor([0, 17, 63])
    rotated = heads + kv_heads
    expected = rotary.apply(qkv[:, : rotated * head_dim].reshape(3, rotated, head_dim), positions)
    untouched = qkv[:, rotated * head_dim :].clone()
    kernels.rotary_inplace(qkv, positions, rotary.cos, rotary.sin, rotated, head_dim)
    assert ulps(qkv[:, : rotated * head_dim].reshape(3, rotated, head_dim), expected) <= max_ulps(
        dtype
    )
    assert torch.equal(qkv[:, rotated * head_dim :], untouched)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(kernels, dtype):
    gate_up = torch.randn(4, 2 * 40, generator=torch.Generator().manual_seed(2)).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert ulps(kernels.silu_and_mul(gate_up), F.silu(gate) * up) <= max_ulps(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [7, 45, 768])
def test_silu_and_mul_vector_lanes_tails_and_extremes(kernels, dtype, size):
    """Vector lanes and a scalar tail agree with PyTorch, across the exponent's whole range
    (large |gate| saturates to 0 or gate), and NaN stays NaN."""
    generator = torch.Generator().manual_seed(3)
    gate = torch.randn(3, size, generator=generator) * torch.tensor([1.0, 8.0, 60.0])[:, None]
    up = torch.randn(3, size, generator=generator)
    gate[2, 0], gate[2, -1] = 200.0, -200.0
    gate_up = torch.cat([gate, up], dim=1).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert ulps(kernels.silu_and_mul(gate_up), F.silu(gate) * up) <= max_ulps(dtype)
    gate_up[1, 0] = float("nan")
    assert torch.isnan(kernels.silu_and_mul(gate_up)[1, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [13, 256])
def test_rms_norm_vector_lanes_and_tails(kernels, dtype, size):
    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(4, size, generator=generator) * 30).to(dtype)
    residual = torch.randn(4, size, generator=generator).to(dtype)
    weight = torch.randn(size, generator=generator).to(dtype)
    assert ulps(kernels.rms_norm(x, weight, 1e-6, None), rms_norm(x, weight, 1e-6)) <= max_ulps(
        dtype
    )
    in_place = residual.clone()
    got = kernels.rms_norm(x, weight, 1e-6, in_place)
    assert torch.equal(in_place, residual + x)
    assert ulps(got, rms_norm(residual + x, weight, 1e-6)) <= max_ulps(dtype)
