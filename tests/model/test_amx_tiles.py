"""bf16 weights packed as tiles (corral/model/packed_weight.py): the tiled layout holds the same
weight, and each tile kernel (AMX, cpu_amx_linear.cpp; AVX-512 bf16 dot products,
cpu_dot_tiles.cpp) is within bf16 rounding of an exact product and gives a row the same bits
whatever the rows beside it, at every row count. A model with tiled weights generating what it
generates without them: tests/model/test_packed_weight.py (in the layout the CPU loads with).
The AMX cases run where the CPU has AMX (Sapphire Rapids and later Xeons), the dot-product
cases where it has AVX-512 bf16 (those Xeons, Zen 4 and later); the layout tests run
everywhere."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.packed_weight import PackedWeight

_KERNELS = cpu_kernels()


def tile_kernel_params() -> list:
    """ "amx" (few_row_linear, which takes AMX where the process may use it) and the two forms of
    the dot-product kernel (what few_row_linear runs without AMX): "dot" (vdpbf16ps) and "fma"
    (float32 FMAs on widened weights), each skipped where it cannot run."""
    params = []
    for name in ("amx", "dot", "fma"):
        support = "amx_tiles_supported" if name == "amx" else "dot_tiles_supported"
        runs = _KERNELS is not None and getattr(_KERNELS, support)()
        reason = f"no {name} tile kernel here (CPU, build or the kernel's permission)"
        params.append(pytest.param(name, marks=pytest.mark.skipif(not runs, reason=reason)))
    return params


def tile_linear(kernel: str, silu: bool = False):
    """The linear (or fused gate/up) of a tile kernel named by tile_kernel_params."""
    if kernel == "amx":
        return _KERNELS.few_row_linear_silu if silu else _KERNELS.few_row_linear
    form = 0 if kernel == "dot" else 1
    run = _KERNELS.dot_tiles_linear_silu if silu else _KERNELS.dot_tiles_linear

    def linear(x, tiles, bias):
        previous = _KERNELS.dot_tiles_form()
        _KERNELS.set_dot_tiles_form(form)
        try:
            return run(x, tiles, bias)
        finally:
            _KERNELS.set_dot_tiles_form(previous)

    return linear


needs_tiles = pytest.mark.parametrize("kernel", tile_kernel_params())


def test_tiles_keep_the_weight_and_its_rows():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 64, generator=generator).to(torch.bfloat16)
    tiled = PackedWeight.pack(weight, "tiles")
    assert tiled.layout == "tiles" and tuple(tiled.data.shape) == (3, 2, 16, 16, 2)
    assert tiled.shape == weight.shape and tiled.dtype == torch.bfloat16
    assert torch.equal(tiled.unpack(), weight)
    # Input 32 kb + 2 t + e of output 16 b + n at [b, kb, t, n, e].
    for b, kb, t, n, e in [(0, 0, 0, 0, 0), (2, 1, 15, 15, 1), (1, 0, 7, 3, 1), (1, 1, 2, 9, 0)]:
        assert tiled.data[b, kb, t, n, e] == weight[16 * b + n, 32 * kb + 2 * t + e]
    row_ids = torch.tensor([[0, 5], [47, 17]])
    assert torch.equal(tiled[row_ids], weight[row_ids])
    assert torch.equal(tiled[row_ids.to(torch.int32)], weight[row_ids])  # the indexing path


@pytest.mark.parametrize("shape", [(40, 64), (32, 48), (32, 0), (32,)])
def test_shapes_that_do_not_tile_are_refused(shape):
    weight = torch.zeros(shape, dtype=torch.bfloat16)
    assert not PackedWeight.can_pack(weight, "tiles")
    with pytest.raises(ValueError, match="does not pack as tiles"):
        PackedWeight.pack(weight, "tiles")
    with pytest.raises(ValueError, match="unknown packed layout"):
        PackedWeight.pack(torch.zeros(64, 64, dtype=torch.bfloat16), "rows")


def _bound(x: torch.Tensor, weight: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # One bf16 rounding of the result, plus float32 accumulation over the inputs.
    scale = x.double().abs() @ weight.double().abs().T
    return reference.abs() * 2**-8 + scale * 2**-20


@needs_tiles
@pytest.mark.parametrize("shape", [(960, 576), (48, 64), (16, 32), (32, 1536), (80, 96)])
def test_the_kernel_is_exact_to_rounding_and_keeps_a_rows_bits(shape, kernel):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
    bias = torch.randn(shape[0], generator=generator).to(torch.bfloat16)
    tiled = PackedWeight.pack(weight, "tiles")
    for rows in (1, 2, 7, 16, 17, 31, 32, 33, 70):
        x = torch.randn(rows, shape[1], generator=generator).to(torch.bfloat16)
        for b in (None, bias):
            out = tile_linear(kernel)(x, tiled.data, b).double()
            reference = x.double() @ weight.double().T
            if b is not None:
                reference += b.double()
            assert ((out - reference).abs() <= _bound(x, weight, reference)).all(), (rows, b)
        # A row's result does not depend on the rows beside it (blocks of 32 rows, tiles of 16,
        # the last block's shorter tiles, threads by output blocks).
        together = tile_linear(kernel)(x, tiled.data, bias)
        for row in range(rows):
            alone = tile_linear(kernel)(x[row : row + 1].contiguous(), tiled.data, bias)
            assert torch.equal(alone[0], together[row]), (rows, row)
        if rows > 20:
            part = tile_linear(kernel)(x[3:20].contiguous(), tiled.data, bias)
            assert torch.equal(part, together[3:20])


@needs_tiles
@pytest.mark.parametrize("shape", [(96, 576), (48, 1536)])
def test_rows_past_one_row_block_keep_their_bits(shape, kernel):
    """A prefill's rows go through the kernel in blocks of about 512 KB of x (448 rows of 576
    inputs, 160 of 1,536), each against all output tiles: rows in any block, and across
    blocks, give the bits they give alone, within rounding of float64."""
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
    bias = torch.randn(shape[0], generator=generator).to(torch.bfloat16)
    tiled = PackedWeight.pack(weight, "tiles")
    x = torch.randn(1000, shape[1], generator=generator).to(torch.bfloat16)
    together = tile_linear(kernel)(x, tiled.data, bias)
    reference = x.double() @ weight.double().T + bias.double()
    assert ((together.double() - reference).abs() <= _bound(x, weight, reference)).all()
    for first, last in ((0, 32), (150, 170), (440, 460), (995, 1000)):
        part = tile_linear(kernel)(x[first:last].contiguous(), tiled.data, bias)
        assert torch.equal(part, together[first:last]), (first, last)


@needs_tiles
def test_nan_and_infinity_propagate_and_subnormals_count_as_zero(kernel):
    weight = torch.zeros(32, 32, dtype=torch.bfloat16)
    weight[0, 0] = weight[1, 1] = 1.0
    weight[2, 0] = float("inf")
    weight[3, 2] = 2.0**-130  # a subnormal weight
    x = torch.zeros(3, 32, dtype=torch.bfloat16)
    x[0, :2] = torch.tensor([1.0, float("nan")])  # every output of row 0 is NaN (0 * NaN)
    x[1, :3] = torch.tensor([2.0, 3.0, 1.0])
    x[2, 0] = 2.0**-130  # a subnormal input
    x[2, 2] = 2.0**100
    out = tile_linear(kernel)(x, PackedWeight.pack(weight, "tiles").data, None)
    assert out[0].isnan().all()
    expected = torch.nn.functional.linear(x.float(), weight.float()).to(torch.bfloat16)
    assert out[1, 0] == 2.0 and out[1, 1] == 3.0 and out[1, 2] == float("inf")
    torch.testing.assert_close(out[1, 4:], expected[1, 4:], rtol=0, atol=0)
    # The tile unit and vdpbf16ps read subnormal operands as zero (as oneDNN's kernels do):
    # 1 * 2^-130 is 0 where torch's float32 keeps 7e-40, 2^-130 * inf is 0 * inf = NaN, 2^100 *
    # 2^-130 is 0. The FMA form multiplies subnormals as they are (2^-130 * inf is inf, 2^100 *
    # 2^-130 is 2^-30), and its bf16 store (vcvtneps2bf16) flushes a subnormal result to 0.
    assert expected[1, 3] != 0 and out[1, 3] == 0
    assert out[2, 0] == 0
    if kernel == "fma":
        assert out[2, 2] == float("inf") and out[2, 3] == 2.0**-30
    else:
        assert out[2, 2].isnan() and out[2, 3] == 0


@needs_tiles
def test_row_lookups_and_refusals(kernel):
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 64, generator=generator).to(torch.bfloat16)
    tiled = PackedWeight.pack(weight, "tiles")
    row_ids = torch.tensor([47, 0, 7, 7, 21, 16, 15])
    assert torch.equal(_KERNELS.packed_rows(tiled.data, row_ids), weight[row_ids])
    with pytest.raises(RuntimeError, match="row 48 of 48"):
        _KERNELS.packed_rows(tiled.data, torch.tensor([48]))
    with pytest.raises(RuntimeError, match="tiled weight"):
        tile_linear(kernel)(torch.zeros(1, 96, dtype=torch.bfloat16), tiled.data, None)
    with pytest.raises(RuntimeError, match="bias"):
        tile_linear(kernel)(
            torch.zeros(1, 64, dtype=torch.bfloat16), tiled.data, torch.zeros(47).bfloat16()
        )
