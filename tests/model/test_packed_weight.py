"""Packed bf16 weights (corral/model/packed_weight.py): the packed layout holds the same weight,
the kernel gives the same bits from it as from the plain layout at every row count, and a model
with packed weights generates exactly what it generates without them (layer loop on and off,
tied and untied heads, int8 layers beside a packed head)."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.layers import linear as linear_module
from corral.model.packed_weight import PackedWeight
from corral.model.quantization import Int8Weight
from tests.model.test_layer_loop import _run as run_prompts

_KERNELS = cpu_kernels()
needs_packing = pytest.mark.skipif(
    _KERNELS is None or not _KERNELS.packed_weights_supported(),
    reason="this build of the CPU kernels does not read packed weights (AVX2 without bf16 dots)",
)


def test_packing_keeps_the_weight_and_its_rows():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 48, generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    assert tuple(packed.data.shape) == (3, 3, 4, 16)
    assert packed.shape == weight.shape and packed.dtype == torch.bfloat16
    assert torch.equal(packed.unpack(), weight)
    # quad 1, block 2, row 3 of the quad is weight row 7, columns 32..47 in paired order:
    # column 32 + l at 2l and column 40 + l at 2l + 1
    block = packed.data[1, 2, 3]
    assert torch.equal(block[0::2], weight[7, 32:40])
    assert torch.equal(block[1::2], weight[7, 40:48])
    row_ids = torch.tensor([[0, 5], [11, 4]])
    assert torch.equal(packed[row_ids], weight[row_ids])


@pytest.mark.parametrize("shape", [(10, 48), (12, 40), (12,)])
def test_shapes_that_do_not_pack_are_refused(shape):
    weight = torch.zeros(shape, dtype=torch.bfloat16)
    assert not PackedWeight.can_pack(weight)
    with pytest.raises(ValueError, match="does not pack"):
        PackedWeight.pack(weight)


@needs_packing
@pytest.mark.parametrize(
    "shape",
    [(960, 576), (256, 768), (8, 16), (64, 1536), (8, 1040)],  # >1024: column blocks
)
def test_the_kernel_gives_the_same_bits_packed_and_plain(shape):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
    bias = torch.randn(shape[0], generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    for rows in (1, 2, 3, 4, 5, 7, 33):
        x = torch.randn(rows, shape[1], generator=generator).to(torch.bfloat16)
        for b in (None, bias):
            expected = _KERNELS.few_row_linear(x, weight, b)
            assert torch.equal(_KERNELS.few_row_linear(x, packed.data, b), expected), rows
    # A row's result does not depend on the rows beside it.
    x = torch.randn(9, shape[1], generator=generator).to(torch.bfloat16)
    together = _KERNELS.few_row_linear(x, packed.data, None)
    for row in range(9):
        alone = _KERNELS.few_row_linear(x[row : row + 1].contiguous(), packed.data, None)
        assert torch.equal(alone[0], together[row])


@needs_packing
def test_row_lookups_through_the_kernel_match_the_plain_table():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(40, 64, generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    row_ids = torch.tensor([39, 0, 7, 7, 21])
    assert torch.equal(_KERNELS.packed_rows(packed.data, row_ids), weight[row_ids])
    assert torch.equal(packed[row_ids.view(5, 1)], weight[row_ids.view(5, 1)])
    with pytest.raises(RuntimeError, match="row 40 of 40"):
        _KERNELS.packed_rows(packed.data, torch.tensor([40]))


@needs_packing
def test_the_kernel_refuses_a_packed_weight_of_the_wrong_width():
    packed = PackedWeight.pack(torch.zeros(8, 32, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="packed weight"):
        _KERNELS.few_row_linear(torch.zeros(1, 48, dtype=torch.bfloat16), packed.data, None)


@needs_packing
def test_rows_beyond_the_kernels_limit_take_f_linear_on_the_unpacked_weight(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(64, 32, generator=generator).to(torch.bfloat16)
    x = torch.randn(6, 32, generator=generator).to(torch.bfloat16)
    monkeypatch.setattr(linear_module, "_MAX_KERNEL_ROWS", 4)
    out = linear_module.linear(x, PackedWeight.pack(weight))
    assert torch.equal(out, torch.nn.functional.linear(x, weight))


def _generate(path, monkeypatch, pack: bool, loop: bool, **kwargs):
    monkeypatch.setenv("CORRAL_PACK_WEIGHTS", "1" if pack else "0")
    return run_prompts(path, loop, "bfloat16", **kwargs)


@needs_packing
@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; biases and a tied head
@pytest.mark.parametrize("loop", [True, False])
def test_a_packed_model_generates_exactly_what_the_plain_one_does(
    tiny_model_factory, monkeypatch, family, loop
):
    path = tiny_model_factory(family)
    packed, model = _generate(path, monkeypatch, True, loop)
    assert all(isinstance(layer.qkv, PackedWeight) for layer in model.layers)
    assert all(isinstance(layer.down, PackedWeight) for layer in model.layers)
    assert isinstance(model.lm_head, PackedWeight)
    if family == "qwen2":
        assert model.embed_tokens is model.lm_head  # one table, read packed for lookups
    plain, other = _generate(path, monkeypatch, False, loop)
    assert type(other.layers[0].qkv) is torch.Tensor
    assert packed == plain


@needs_packing
def test_int8_layers_keep_their_kernel_beside_a_packed_head(tiny_model_factory, monkeypatch):
    path = tiny_model_factory("llama")
    packed, model = _generate(path, monkeypatch, True, True, quantization="int8")
    assert isinstance(model.layers[0].qkv, Int8Weight)
    assert isinstance(model.lm_head, PackedWeight)
    plain, _ = _generate(path, monkeypatch, False, True, quantization="int8")
    assert packed == plain


def test_float32_models_are_not_packed(tiny_model_factory, monkeypatch):
    monkeypatch.setenv("CORRAL_PACK_WEIGHTS", "1")
    _, model = run_prompts(tiny_model_factory("llama"), True, "float32")
    assert type(model.layers[0].qkv) is torch.Tensor
