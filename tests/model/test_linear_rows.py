"""The few-row linear kernel (bf16, fp16, fp32): a row's output is bit-identical whatever the
number of rows in the call (speculative verification relies on it for greedy identity), and
close to float32 arithmetic."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels

kernels = cpu_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="the CPU kernels did not build here")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "shape", [(1538, 256), (256, 768), (130, 72), (8, 20), (12, 16), (20, 1304), (8, 1536)]
)
def test_rows_do_not_change_each_others_bits(dtype, shape):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator).to(dtype)
    bias = torch.randn(shape[0], generator=generator).to(dtype)
    for rows in (2, 3, 5, 8, 17, 32):
        x = torch.randn(rows, shape[1], generator=generator).to(dtype)
        together = kernels.few_row_linear(x, weight, bias)
        alone = torch.cat(
            [kernels.few_row_linear(x[i : i + 1].contiguous(), weight, bias) for i in range(rows)]
        )
        assert torch.equal(together, alone), (rows, shape)
        reference = x.float() @ weight.float().T + bias.float()
        tolerance = 1e-4 if dtype == torch.float32 else 0.05
        torch.testing.assert_close(together.float(), reference, atol=tolerance, rtol=0.02)
