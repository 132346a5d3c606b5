"""int8 weights packed in panels (corral/model/quantization.py Int8Weight.packed, the kernel
corral/model/kernels/cpu_int8_panel.cpp): the layout, refused shapes, the kernel against a
float64 reference within the bound its int16 quantization of x allows, batch invariance,
non-finite and tiny rows, and whole generations against the plain layout and transformers."""

from __future__ import annotations

import random

import pytest
import torch

from corral import LLM, SamplingParams
from corral.model.kernels import cpu_kernels
from corral.model.layers.linear import linear
from corral.model.quantization import Int8Weight, int8_linear_reference, quantize_int8
from tests.model.oracle import assert_greedy_matches, hf_model_greedy
from tests.model.test_int8_weights import _dequantized_hf_model

kernels = cpu_kernels()
needs_panels = pytest.mark.skipif(
    kernels is None or not kernels.int8_panels_supported(),
    reason="the int8 panel kernel is not built here (no AVX2/FMA/F16C)",
)


def _weight(
    out_features: int, in_features: int, seed: int = 0, group_size: int | None = None
) -> tuple[Int8Weight, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.2
    weight[:, : in_features // 3] *= 8  # groups of different scales
    return quantize_int8(weight, group_size), torch.randn(out_features, generator=generator)


def _bound(x: torch.Tensor, weight: Int8Weight, exact: torch.Tensor, dtype) -> torch.Tensor:
    """What the kernel may differ from the exact result by: x's int16 quantization (half a step
    of max |x_r| / 32767 an input, times |w|), float32 sums of the blocks, and the output's
    rounding to dtype."""
    w_abs_sum = weight.dequantize(torch.float64).abs().sum(dim=1)
    quantization = x.double().abs().amax(dim=1, keepdim=True) / 65534 * w_abs_sum[None]
    terms = x.double().abs() @ weight.dequantize(torch.float64).abs().T
    rounding = {torch.float32: 2**-23, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    return quantization * 1.0001 + 1e-6 * terms + exact.abs() * rounding * 1.0001 + 1e-30


@pytest.mark.parametrize(("in_features", "group_size"), [(70, None), (96, 32)])
def test_packing_round_trips_and_keeps_the_weight(in_features, group_size):
    weight, _ = _weight(192, in_features, group_size=group_size)
    packed = weight.packed()
    assert packed.is_packed and not weight.is_packed and "packed" in repr(packed)
    assert packed.qweight.shape == (3, in_features // 2, 128)
    assert packed.shape == weight.shape == (192, in_features)
    assert packed.group_size == weight.group_size and packed.nbytes == weight.nbytes
    assert torch.equal(packed.plain_values(), weight.qweight)
    assert torch.equal(packed.plain_scales(), weight.scales)
    assert torch.equal(packed.dequantize(torch.float32), weight.dequantize(torch.float32))
    # Output 8s + l of panel p at byte 16s + 2l (+1 for the odd input) of each input pair.
    out_id, in_id = 64 + 8 * 5 + 3, 2 * 17 + 1
    assert packed.qweight[1, 17, 16 * 5 + 2 * 3 + 1] == weight.qweight[out_id, in_id]
    if group_size is not None:  # scales [out / 64, groups, 64]
        assert packed.scales.shape == (3, 3, 64)
        assert packed.scales[2, 1, 5] == weight.scales[2 * 64 + 5, 1]


def test_shapes_that_do_not_pack_are_refused():
    assert quantize_int8(torch.randn(64, 64), group_size=16).can_pack()
    wide_groups = quantize_int8(torch.randn(64, 2048), group_size=1024)  # int32 sums could wrap
    for weight in (
        wide_groups,
        quantize_int8(torch.randn(96, 64)),
        quantize_int8(torch.randn(64, 7)),
    ):
        assert not weight.can_pack()
        with pytest.raises(ValueError, match="does not pack"):
            weight.packed()
    packed = quantize_int8(torch.randn(64, 64)).packed()
    assert not packed.can_pack()
    with pytest.raises(ValueError, match="fused before they are packed"):
        Int8Weight.cat([packed, packed])
    with pytest.raises(ValueError, match=r"\[out / 64, in / 2, 128\]"):
        Int8Weight(torch.zeros(1, 4, 64, dtype=torch.int8), torch.ones(64), torch.float32)
    with pytest.raises(ValueError, match="plain qweight takes scales"):
        Int8Weight(torch.zeros(64, 8, dtype=torch.int8), torch.ones(1, 2, 64), torch.float32)


@needs_panels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("shape", "group_size"),
    [((64, 2), None), ((128, 70), None), ((192, 520), None), ((64, 1536), None),
     ((128, 96), 16), ((64, 1536), 128), ((192, 1024), 512)],
)  # fmt: skip
def test_kernel_is_within_the_quantization_bound(dtype, shape, group_size):
    weight, bias = _weight(*shape, seed=1, group_size=group_size)
    packed = weight.packed()
    generator = torch.Generator().manual_seed(2)
    for rows in (1, 2, 3, 4, 5, 7, 11, 33):
        x = torch.randn(rows, shape[1], generator=generator)
        x[0, 0] = 40.0  # a large element: the bound scales with each row's own max
        x = x.to(dtype)
        for b in (bias.to(dtype), None):
            got = kernels.int8_linear(x, packed.qweight, packed.scales, b)
            assert got.dtype == dtype and got.shape == (rows, shape[0])
            exact = x.double() @ weight.dequantize(torch.float64).T
            if b is not None:
                exact = exact + b.double()
            error = (got.double() - exact).abs()
            bound = _bound(x, weight, exact, dtype)
            assert (error <= bound).all(), (rows, float((error - bound).max()))


@needs_panels
def test_kernel_is_closer_than_a_biased_one_could_be():
    """The bound is tight enough to catch a mistake: weights read one input off, or the row's
    scale mislaid, break it."""
    weight, _ = _weight(128, 256, seed=3)
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(4))
    exact = x.double() @ weight.dequantize(torch.float64).T
    bound = _bound(x, weight, exact, torch.float32)
    shifted = x.roll(1, dims=1).double() @ weight.dequantize(torch.float64).T
    assert ((shifted - exact).abs() > bound).any()
    assert ((exact * (1 + 1e-3) - exact).abs() > bound).any()
    got = kernels.int8_linear(x, weight.packed().qweight, weight.scales, None)
    assert ((got.double() - exact).abs() <= bound).all()


@needs_panels
@pytest.mark.parametrize(("dtype", "group_size"), [(torch.float32, None), (torch.bfloat16, None),
                                                   (torch.bfloat16, 32)])  # fmt: skip
def test_a_rows_result_does_not_depend_on_the_batch(dtype, group_size):
    weight, bias = _weight(192, 608, seed=5, group_size=group_size)
    packed = weight.packed()
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(33, 608, generator=generator).to(dtype)
    x[7] = float("nan")  # an exact-path row among quantized ones
    together = kernels.int8_linear(x, packed.qweight, packed.scales, bias.to(dtype))
    for row in range(33):
        alone = kernels.int8_linear(
            x[row : row + 1].contiguous(), packed.qweight, packed.scales, bias.to(dtype)
        )
        assert torch.equal(alone[0], together[row]) or row == 7, row
        for count in (2, 5, 9):
            if row + count <= 33:
                part = kernels.int8_linear(
                    x[row : row + count].contiguous(), packed.qweight, packed.scales, bias.to(dtype)
                )
                assert torch.equal(part[0], together[row]) or row == 7, (row, count)
    assert together[7].isnan().all()


@needs_panels
@pytest.mark.parametrize("group_size", [None, 16])
def test_non_finite_zero_and_tiny_rows_follow_torch(group_size):
    weight, bias = _weight(64, 48, seed=7, group_size=group_size)
    packed = weight.packed()
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(8))
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2] = 0.0
    x[3] = torch.randn(48, generator=torch.Generator().manual_seed(9)) * 1e-36  # below 1e-30
    got = kernels.int8_linear(x, packed.qweight, packed.scales, bias)
    reference = int8_linear_reference(x, weight, bias)
    assert got[0].isnan().all()
    assert torch.equal(got[1].isnan(), reference[1].isnan())
    assert torch.equal(got[1].isinf(), reference[1].isinf())
    assert torch.equal(got[2], bias)
    torch.testing.assert_close(got[3], reference[3], rtol=1e-5, atol=1e-6)
    assert ((got[4].double() - reference[4].double()).abs() <= 1e-3).all()


@needs_panels
def test_linear_dispatches_packed_weights():
    weight, bias = _weight(128, 64, seed=10)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(11))
    got = linear(x, weight.packed(), bias)
    torch.testing.assert_close(got, int8_linear_reference(x, weight, bias), atol=2e-3, rtol=1e-3)
    x64 = x.double()  # no kernel for float64: the reference path unpacks
    torch.testing.assert_close(
        linear(x64, weight.packed(), bias.double()),
        torch.nn.functional.linear(x64, weight.dequantize(torch.float64), bias.double()),
    )


def _generate(path, prompts, dtype: str, **kwargs):
    llm = LLM(model=str(path), dtype=dtype, num_blocks=128, block_size=16, quantization="int8")
    model = llm.engine.executor.model
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0, **kwargs)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return model, outputs


@needs_panels
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_generations_match_the_plain_layout_and_transformers(
    family, tiny_model_factory, monkeypatch
):
    path = tiny_model_factory(family)
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 33, 90)]
    model, packed_outputs = _generate(path, prompts, "float32")
    assert all(layer.qkv.is_packed and layer.down.is_packed for layer in model.layers)
    hf = _dequantized_hf_model(path, lm_head=False)
    oracle = [hf_model_greedy(hf, prompt, 10) for prompt in prompts]
    assert_greedy_matches(family, prompts, packed_outputs, oracle, atol=1e-3)
    monkeypatch.setenv("CORRAL_PACK_INT8", "0")
    model, plain_outputs = _generate(path, prompts, "float32")
    assert not any(layer.qkv.is_packed for layer in model.layers)
    for packed, plain in zip(packed_outputs, plain_outputs, strict=True):
        assert packed.outputs[0].token_ids == plain.outputs[0].token_ids


@needs_panels
def test_bfloat16_generations_agree_with_the_plain_layout(tiny_model_factory, monkeypatch):
    """In bf16 the two kernels round differently: tokens agree until a near tie, and the chosen
    tokens' log-probabilities stay close while they do."""
    path = tiny_model_factory("llama")
    rng = random.Random(2)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 40)]
    _, packed_outputs = _generate(path, prompts, "bfloat16")
    monkeypatch.setenv("CORRAL_PACK_INT8", "0")
    _, plain_outputs = _generate(path, prompts, "bfloat16")
    for packed, plain in zip(packed_outputs, plain_outputs, strict=True):
        packed_ids, plain_ids = packed.outputs[0].token_ids, plain.outputs[0].token_ids
        assert packed_ids[0] == plain_ids[0]
        for i, (a, b) in enumerate(zip(packed_ids, plain_ids, strict=True)):
            if a != b:
                break
            got = packed.outputs[0].logprobs[i][a].logprob
            want = plain.outputs[0].logprobs[i][b].logprob
            assert abs(got - want) <= 0.05, (i, got, want)


@needs_panels
def test_quantizing_a_loaded_packed_bf16_model_then_packing_int8(tiny_model_factory):
    """quantize_model on a model whose bf16 weights are panels already (the head too, tied to
    the embeddings): it reads the panels' weights, keeps the packed table for lookups, and the
    int8 weights then pack."""
    from corral.model.packed_weight import PackedWeight
    from corral.model.quantization import pack_int8_weights, quantize_model

    path = tiny_model_factory("qwen2")  # tied head
    llm = LLM(model=str(path), dtype="bfloat16", num_blocks=64, block_size=16)
    model = llm.engine.executor.model
    if not isinstance(model.lm_head, PackedWeight):
        pytest.skip("bf16 panels are not used on this CPU")
    head = model.lm_head.unpack()
    quantize_model(model, lm_head=True)
    assert isinstance(model.embed_tokens, PackedWeight)
    assert torch.equal(
        model.lm_head.dequantize(torch.float32), quantize_int8(head).dequantize(torch.float32)
    )
    assert pack_int8_weights(model) > 0
    assert model.lm_head.is_packed and all(layer.o.is_packed for layer in model.layers)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    output = llm.generate([{"prompt_token_ids": [5, 6, 7]}], params, use_tqdm=False)[0]
    assert len(output.outputs[0].token_ids) == 4


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; tied head
def test_int8_all_quantizes_the_head_too(family, tiny_model_factory):
    """--quantization int8-all: the LM head is an int8 weight as well (packed where the panel
    kernel runs), a tied head an int8 copy of its own while lookups read the table; greedy
    output matches transformers with every linear, head included, dequantized."""
    path = tiny_model_factory(family)
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 9, 40)]
    llm = LLM(model=str(path), dtype="float32", num_blocks=128, block_size=16,
              quantization="int8-all")  # fmt: skip
    model = llm.engine.executor.model
    assert isinstance(model.lm_head, Int8Weight)
    if kernels is not None and kernels.int8_panels_supported():
        assert model.lm_head.is_packed
    assert type(model.embed_tokens) is torch.Tensor  # lookups: the float32 table, unquantized
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    hf = _dequantized_hf_model(path, lm_head=True)
    oracle = [hf_model_greedy(hf, prompt, 8) for prompt in prompts]
    assert_greedy_matches(family, prompts, outputs, oracle, atol=1e-3)


def test_int8_all_is_a_serve_flag_and_unknown_methods_are_refused():
    from corral.cli import build_parser
    from corral.config import ModelConfig
    from corral.engine.engine_args import engine_config_from_args

    args = build_parser("serve").parse_args(["serve", "--quantization", "int8-all"])
    assert engine_config_from_args(args).model.quantization == "int8-all"
    with pytest.raises(ValueError, match=r"'int8_all' is not one of none, int8, int8-all"):
        ModelConfig(quantization="int8_all")
