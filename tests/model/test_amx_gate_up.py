"""The gate/up projection and SiLU-and-mul in one pass over tiles (amx_linear_silu in
cpu_amx_linear.cpp, reached through few_row_linear_silu and linear_silu_and_mul where the process
may use AMX; dot_tiles_linear_silu in cpu_dot_tiles.cpp without AMX): the same bits as the tile
linear followed by silu_and_mul, at every row count (one tile, row blocks, a prefill's 2,048
rows), with and without bias, with NaN, infinity and large values; other weights take the two
calls. Each kernel's cases run where the CPU has it (test_amx_tiles.tile_kernel_params), the
fallback test wherever the kernels build."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.layers.linear import linear, linear_silu_and_mul
from corral.model.packed_weight import PackedWeight
from tests.model.test_amx_tiles import tile_kernel_params, tile_linear

_KERNELS = cpu_kernels()
needs_kernels = pytest.mark.skipif(_KERNELS is None, reason="CPU kernels not built")
needs_tiles = pytest.mark.parametrize("kernel", tile_kernel_params())


def _two_calls(
    x: torch.Tensor, tiles: torch.Tensor, bias: torch.Tensor | None, kernel: str = "amx"
) -> torch.Tensor:
    return _KERNELS.silu_and_mul(tile_linear(kernel)(x, tiles, bias))


def _one_pass(kernel: str):
    return tile_linear(kernel, silu=True)


@needs_tiles
@pytest.mark.parametrize("intermediate, hidden", [(1536, 576), (16, 32), (48, 64), (96, 1536)])
def test_one_pass_gives_the_bits_of_the_two_calls(intermediate, hidden, kernel):
    generator = torch.Generator().manual_seed(5)
    weight = (torch.randn(2 * intermediate, hidden, generator=generator) * 0.2).bfloat16()
    bias = torch.randn(2 * intermediate, generator=generator).bfloat16()
    tiles = PackedWeight.pack(weight, "tiles").data
    for rows in (1, 2, 15, 16, 17, 32, 33, 70, 449, 2048):
        if rows > 100 and intermediate * hidden < 1536 * 576:
            continue
        x = torch.randn(rows, hidden, generator=generator).bfloat16()
        for b in (None, bias):
            fused = _one_pass(kernel)(x, tiles, b)
            assert fused.shape == (rows, intermediate) and fused.dtype == torch.bfloat16
            assert torch.equal(fused, _two_calls(x, tiles, b, kernel)), (rows, b is None)
    # and against float64: silu(gate) * up within a few bf16 roundings
    x = torch.randn(40, hidden, generator=generator).bfloat16()
    gate, up = (x.double() @ weight.double().T + bias.double()).chunk(2, dim=-1)
    exact = torch.nn.functional.silu(gate) * up
    fused = _one_pass(kernel)(x, tiles, bias).double()
    scale = (x.double().abs() @ weight.double().abs().T).chunk(2, dim=-1)
    bound = exact.abs() * 2**-6 + (scale[0] * up.abs() + scale[1]) * 2**-12
    assert ((fused - exact).abs() <= bound).all()


@needs_tiles
def test_nan_infinity_and_overflow_match_the_two_calls(kernel):
    intermediate, hidden = 32, 64
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(2 * intermediate, hidden, generator=generator).bfloat16()
    weight[0, 0] = float("inf")  # gate 0 of a row with x[:, 0] > 0 is +inf, < 0 is -inf
    weight[intermediate + 1, 1] = float("inf")  # up 1
    weight[2, 2] = 3e38  # gate 2 overflows to inf for large x[:, 2]
    tiles = PackedWeight.pack(weight, "tiles").data
    x = torch.randn(6, hidden, generator=generator).bfloat16()
    x[0, 3] = float("nan")
    x[1, 0], x[2, 0] = 1.0, -1.0
    x[3, 1] = -2.0
    x[4, 2] = 100.0
    x[5] *= 1e4
    fused = _one_pass(kernel)(x, tiles, None)
    separate = _two_calls(x, tiles, None, kernel)
    assert torch.equal(fused.isnan(), separate.isnan())
    assert torch.equal(fused.nan_to_num(0.0), separate.nan_to_num(0.0))
    assert fused[0].isnan().all() and fused[1, 0] == float("inf")


@needs_tiles
def test_refusals(kernel):
    tiles = PackedWeight.pack(torch.zeros(48, 64, dtype=torch.bfloat16), "tiles").data
    with pytest.raises(RuntimeError, match="two halves must be whole blocks"):
        _one_pass(kernel)(torch.zeros(1, 64, dtype=torch.bfloat16), tiles, None)
    tiles = PackedWeight.pack(torch.zeros(64, 64, dtype=torch.bfloat16), "tiles").data
    with pytest.raises(RuntimeError, match="tiled weight"):
        _one_pass(kernel)(torch.zeros(1, 96, dtype=torch.bfloat16), tiles, None)
    with pytest.raises(RuntimeError, match="bias"):
        _one_pass(kernel)(
            torch.zeros(1, 64, dtype=torch.bfloat16), tiles, torch.zeros(63).bfloat16()
        )


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_other_weights_take_the_linear_then_silu_and_mul(dtype):
    generator = torch.Generator().manual_seed(7)
    weight = torch.randn(64, 32, generator=generator).to(dtype)
    bias = torch.randn(64, generator=generator).to(dtype)
    x = torch.randn(5, 32, generator=generator).to(dtype)
    expected = _KERNELS.silu_and_mul(linear(x, weight, bias))
    assert torch.equal(linear_silu_and_mul(_KERNELS, x, weight, bias), expected)
    assert torch.equal(_KERNELS.few_row_linear_silu(x, weight, bias), _two_calls(x, weight, bias))
    if dtype == torch.bfloat16 and _KERNELS.tiles_supported():
        tiled = PackedWeight.pack(weight, "tiles")
        assert torch.equal(linear_silu_and_mul(_KERNELS, x, tiled, bias), expected)
