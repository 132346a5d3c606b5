"""Packed bf16 weights (corral/model/packed_weight.py): the packed layout holds the same weight,
the panel kernel agrees with the plain layout's kernel to rounding and gives a row the same bits
whatever the rows beside it, and a model with packed weights generates what it generates without
them (layer loop on and off, tied and untied heads, int8 layers beside a packed head; in the
layout this CPU loads with: AMX tiles, tests/model/test_amx_tiles.py, or panels)."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.layers import linear as linear_module
from corral.model.packed_weight import PackedWeight, build_layout
from corral.model.quantization import Int8Weight
from tests.model.test_layer_loop import _run as run_prompts

_KERNELS = cpu_kernels()
needs_packing = pytest.mark.skipif(
    _KERNELS is None or not _KERNELS.packed_weights_supported(),
    reason="this build of the CPU kernels does not read packed weights (AVX2 without bf16 dots)",
)
# The layout bf16 models load with on this CPU (tiles where it has AMX, else panels where the
# build reads them): the model-level tests below run on whichever it is.
_MODEL_LAYOUT = build_layout()
needs_model_packing = pytest.mark.skipif(
    _MODEL_LAYOUT is None, reason="bf16 models load unpacked with this CPU's build"
)


def test_packing_keeps_the_weight_and_its_rows():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 48, generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    assert tuple(packed.data.shape) == (2, 48, 64)
    assert packed.shape == weight.shape and packed.dtype == torch.bfloat16
    assert torch.equal(packed.unpack(), weight)
    # Panel 1, input 5: sub-panel 2 holds outputs 96..111, output 96 + l at 32 + 2l and output
    # 104 + l at 32 + 2l + 1.
    sub_panel = packed.data[1, 5, 32:48]
    assert torch.equal(sub_panel[0::2], weight[96:104, 5])
    assert torch.equal(sub_panel[1::2], weight[104:112, 5])
    row_ids = torch.tensor([[0, 5], [127, 71]])
    assert torch.equal(packed[row_ids], weight[row_ids])


@pytest.mark.parametrize("shape", [(10, 48), (96, 40), (64, 0), (64,)])
def test_shapes_that_do_not_pack_are_refused(shape):
    weight = torch.zeros(shape, dtype=torch.bfloat16)
    assert not PackedWeight.can_pack(weight)
    with pytest.raises(ValueError, match="does not pack"):
        PackedWeight.pack(weight)


@needs_packing
@pytest.mark.parametrize(
    "shape",
    [(960, 576), (256, 768), (64, 16), (64, 1536), (128, 1040), (64, 7)],  # > 256: input blocks
)
def test_the_kernel_agrees_with_the_plain_layout_and_keeps_a_rows_bits(shape):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=generator).to(torch.bfloat16)
    bias = torch.randn(shape[0], generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    for rows in (1, 2, 3, 4, 5, 6, 7, 8, 11, 33):
        x = torch.randn(rows, shape[1], generator=generator).to(torch.bfloat16)
        for b in (None, bias):
            out = _KERNELS.few_row_linear(x, packed.data, b)
            # Both round an fp32 sum of the same products taken in another order: within one
            # bf16 step of each other, plus the fp32 sums' own error where terms cancel.
            plain = _KERNELS.few_row_linear(x, weight, b).double()
            scale = x.double().abs() @ weight.double().abs().T
            assert ((out.double() - plain).abs() <= plain.abs() * 2**-7 + scale * 2**-20).all()
        # A row's result does not depend on the rows beside it (tiles of 1-5 rows, blocks of
        # inputs, threads by panels).
        together = _KERNELS.few_row_linear(x, packed.data, bias)
        for row in range(rows):
            alone = _KERNELS.few_row_linear(x[row : row + 1].contiguous(), packed.data, bias)
            assert torch.equal(alone[0], together[row]), (rows, row)


@needs_packing
def test_the_kernel_keeps_nan_infinity_and_subnormals_as_torch_does():
    weight = torch.zeros(64, 8, dtype=torch.bfloat16)
    weight[0, 0] = weight[1, 1] = 1.0
    weight[2, 0] = float("inf")
    x = torch.zeros(2, 8, dtype=torch.bfloat16)
    x[0, :2] = torch.tensor([1.0, float("nan")])  # every output of row 0 is NaN (0 * NaN)
    x[1, :2] = torch.tensor([2.0**-130, 3.0])  # a subnormal, and inf * subnormal
    out = _KERNELS.few_row_linear(x, PackedWeight.pack(weight).data, None)
    expected = torch.nn.functional.linear(x.float(), weight.float()).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert out[1, 0] == 2.0**-130 and out[1, 2] == float("inf")


@needs_packing
def test_row_lookups_through_the_kernel_match_the_plain_table():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(192, 40, generator=generator).to(torch.bfloat16)
    packed = PackedWeight.pack(weight)
    row_ids = torch.tensor([191, 0, 7, 7, 21, 72, 136, 8, 15])
    assert torch.equal(_KERNELS.packed_rows(packed.data, row_ids), weight[row_ids])
    assert torch.equal(packed[row_ids.view(9, 1)], weight[row_ids.view(9, 1)])
    # int32 ids take the tensor-indexing path instead of the kernel.
    assert torch.equal(packed[row_ids.to(torch.int32)], weight[row_ids])
    with pytest.raises(RuntimeError, match="row 192 of 192"):
        _KERNELS.packed_rows(packed.data, torch.tensor([192]))


@needs_packing
def test_the_kernel_refuses_a_packed_weight_of_the_wrong_width():
    packed = PackedWeight.pack(torch.zeros(64, 32, dtype=torch.bfloat16))
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


# How far a packed model's log-probabilities may stray from the plain one's. Panels sum the same
# float32 products in another order: 0.02. AMX tiles sum them in the tile unit (its own order,
# subnormals as zero): up to 0.029 measured on the tiny llama, while either bf16 run is about
# 0.10 from the same model in float32 (the bf16 activations' own rounding): 0.05.
LOGPROB_TOLERANCE = {"panels": 0.02, "tiles": 0.05}


def _assert_same_generations(packed, plain, tolerance: float = LOGPROB_TOLERANCE["panels"]) -> None:
    """Greedy prompts (every other one, from the first) give the same tokens; every prompt's
    log-probabilities agree to rounding up to where its tokens part (a seeded sample can fall
    the other side of a boundary when the panel kernel's sums, in another order than the plain
    layout's, move a probability by a rounding step)."""
    for index, ((packed_tokens, packed_logprobs), (plain_tokens, plain_logprobs)) in enumerate(
        zip(packed, plain, strict=True)
    ):
        if index % 2 == 0:
            assert packed_tokens == plain_tokens, index
        same = next(
            (i for i, pair in enumerate(zip(packed_tokens, plain_tokens)) if pair[0] != pair[1]),
            len(packed_tokens),
        )
        for packed_step, plain_step in zip(packed_logprobs[: same + 1], plain_logprobs):
            for token_id in packed_step.keys() & plain_step.keys():
                assert packed_step[token_id].logprob == pytest.approx(
                    plain_step[token_id].logprob, abs=tolerance
                )


def _generate(path, monkeypatch, pack: bool, loop: bool, **kwargs):
    monkeypatch.setenv("CORRAL_PACK_WEIGHTS", "1" if pack else "0")
    return run_prompts(path, loop, "bfloat16", **kwargs)


@needs_model_packing
@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; biases and a tied head
@pytest.mark.parametrize("loop", [True, False])
def test_a_packed_model_generates_what_the_plain_one_does(
    tiny_model_factory, monkeypatch, family, loop
):
    path = tiny_model_factory(family)
    packed, model = _generate(path, monkeypatch, True, loop)
    for weight in [layer.qkv for layer in model.layers] + [layer.down for layer in model.layers]:
        assert isinstance(weight, PackedWeight) and weight.layout == _MODEL_LAYOUT
    assert isinstance(model.lm_head, PackedWeight) and model.lm_head.layout == _MODEL_LAYOUT
    if family == "qwen2":
        assert model.embed_tokens is model.lm_head  # one table, read packed for lookups
    plain, other = _generate(path, monkeypatch, False, loop)
    assert type(other.layers[0].qkv) is torch.Tensor
    _assert_same_generations(packed, plain, LOGPROB_TOLERANCE[_MODEL_LAYOUT])


@pytest.mark.skipif(
    _KERNELS is None or not (_KERNELS.amx_tiles_supported() and _KERNELS.dot_tiles_supported()),
    reason="needs both tile kernels (a CPU with AMX): elsewhere the test above runs the one there",
)
@pytest.mark.parametrize("family, form", [("llama", "dot"), ("qwen2", "fma"), ("llama", None)])
def test_a_model_on_dot_product_tiles_generates_what_the_plain_one_does(
    tiny_model_factory, monkeypatch, family, form
):
    """The tiles of a CPU with AVX-512 bf16 but no AMX (Zen 4), run here by turning AMX off, in
    each form (CORRAL_TILE_FORM) and in the one timed at start-up (None)."""
    path = tiny_model_factory(family)
    if form is None:
        monkeypatch.delenv("CORRAL_TILE_FORM", raising=False)
    else:
        monkeypatch.setenv("CORRAL_TILE_FORM", form)
    _KERNELS.allow_amx_tiles(False)
    previous_form = _KERNELS.dot_tiles_form()
    try:
        assert not _KERNELS.amx_tiles_supported() and _KERNELS.tiles_supported()
        packed, model = _generate(path, monkeypatch, True, True)
        if form is not None:
            assert _KERNELS.dot_tiles_form() == {"dot": 0, "fma": 1}[form]
    finally:
        _KERNELS.allow_amx_tiles(True)
        _KERNELS.set_dot_tiles_form(previous_form)
    assert isinstance(model.layers[0].gate_up, PackedWeight) and model.lm_head.layout == "tiles"
    plain, _ = _generate(path, monkeypatch, False, True)
    _assert_same_generations(packed, plain, LOGPROB_TOLERANCE["tiles"])


@needs_model_packing
def test_plain_int8_layers_run_beside_a_packed_head(tiny_model_factory, monkeypatch):
    # int8 panels (tests/model/test_int8_panel.py) off in both runs: only the head differs.
    monkeypatch.setenv("CORRAL_PACK_INT8", "0")
    path = tiny_model_factory("llama")
    packed, model = _generate(path, monkeypatch, True, True, quantization="int8")
    assert isinstance(model.layers[0].qkv, Int8Weight) and not model.layers[0].qkv.is_packed
    assert isinstance(model.lm_head, PackedWeight) and model.lm_head.layout == _MODEL_LAYOUT
    plain, _ = _generate(path, monkeypatch, False, True, quantization="int8")
    _assert_same_generations(packed, plain, LOGPROB_TOLERANCE[_MODEL_LAYOUT])


def test_float32_models_are_not_packed(tiny_model_factory, monkeypatch):
    monkeypatch.setenv("CORRAL_PACK_WEIGHTS", "1")
    _, model = run_prompts(tiny_model_factory("llama"), True, "float32")
    assert type(model.layers[0].qkv) is torch.Tensor
