"""Greedy decoding's argmax kernel (cpu_argmax.cpp) chooses what torch's argmax chooses: the first
largest value of each row, or its first NaN, whatever the row's length and values."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.sampler import argmax_rows

_KERNELS = cpu_kernels()
pytestmark = pytest.mark.skipif(_KERNELS is None, reason="CPU kernels unavailable")


@pytest.mark.parametrize("vocab", [1, 7, 16, 17, 100, 49152])
def test_random_rows_match_torch(vocab):
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(33, vocab, generator=generator)
    assert torch.equal(_KERNELS.argmax_rows(logits), logits.argmax(dim=-1))
    assert argmax_rows(logits) == logits.argmax(dim=-1).tolist()
    # bf16 logits (the draft loop's LM head) as their float32 copy would choose (ties included:
    # rounding to bf16 makes many).
    as_bf16 = logits.bfloat16()
    assert torch.equal(_KERNELS.argmax_rows(as_bf16), as_bf16.float().argmax(dim=-1))


def test_ties_infinities_nan_and_signed_zeros_match_torch():
    vocab = 70
    rows = torch.full((9, vocab), -1.0)
    rows[0, [5, 40, 69]] = 3.0  # ties: the first
    rows[1] = float("-inf")  # all -inf: index 0
    rows[2, 33] = float("inf")
    rows[2, 60] = float("inf")
    rows[3, 50] = float("nan")  # a NaN beats everything, even a larger value before it
    rows[3, 2] = 100.0
    rows[4, [20, 65]] = float("nan")  # the first NaN
    rows[5] = 0.0
    rows[5, 3] = -0.0  # -0 == +0: the first of them
    rows[6, 69] = 5.0  # the tail beyond the last full vector
    rows[7, 0] = 5.0
    rows[8] = float("nan")
    expected = rows.argmax(dim=-1)
    assert torch.equal(_KERNELS.argmax_rows(rows), expected)
    assert expected.tolist() == [5, 0, 33, 50, 20, 0, 69, 0, 0]
    assert torch.equal(_KERNELS.argmax_rows(rows.bfloat16()), expected)  # all exact in bf16


def test_a_strided_view_and_bad_input():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    view = logits[::2]  # not contiguous: the kernel copies
    assert torch.equal(_KERNELS.argmax_rows(view), view.argmax(dim=-1))
    with pytest.raises(RuntimeError, match="float32 or bfloat16 logits"):
        _KERNELS.argmax_rows(logits.half())
    with pytest.raises(RuntimeError, match="float32 or bfloat16 logits"):
        _KERNELS.argmax_rows(torch.zeros(2, 0))
    # Other dtypes take torch's argmax.
    assert argmax_rows(logits.double()) == logits.double().argmax(dim=-1).tolist()
