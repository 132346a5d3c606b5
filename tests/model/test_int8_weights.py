"""Weight-only int8 (--quantization int8): the CPU kernel against the dequantized reference, batch
invariance, the quantization error bound, and greedy generation against transformers running
the same dequantized weights (an exact oracle: the same math)."""

from __future__ import annotations

import random

import pytest
import torch

from corral import LLM, SamplingParams
from corral.cli import build_parser
from corral.config import ModelConfig
from corral.engine.engine_args import engine_config_from_args
from corral.model.kernels import cpu_kernels
from corral.model.layers.linear import linear
from corral.model.quantization import (
    Int8Weight,
    int8_linear_reference,
    quantize_int8,
    quantize_model,
)
from tests.model.oracle import assert_greedy_matches, hf_model_greedy

kernels = cpu_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="the CPU kernels did not build here")

SHAPES = [(130, 72), (7, 20), (96, 256), (3, 5), (258, 48)]  # out % 4 != 0, in % 16 != 0 too


def _case(shape, dtype, group_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(dtype)
    bias = torch.randn(shape[0], generator=generator).to(dtype)
    return quantize_int8(weight, group_size), bias, generator


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [None, 16])
def test_kernel_equals_dequantized_reference(dtype, shape, group_size):
    if group_size is not None and shape[1] % group_size:
        pytest.skip("group size does not divide in_features")
    weight, bias, generator = _case(shape, dtype, group_size)
    for rows in (1, 2, 5, 32):
        x = torch.randn(rows, shape[1], generator=generator).to(dtype)
        for b in (bias, None):
            got = kernels.int8_linear(x, weight.qweight, weight.scales, b)
            assert got.dtype == dtype and got.shape == (rows, shape[0])
            exact = x.double() @ weight.dequantize(torch.float64).T
            if b is not None:
                exact = exact + b.double()
            # float32 sums: a few ulps of the terms' size; 16-bit outputs: the final rounding.
            scale = (x.double().abs() @ weight.dequantize(torch.float64).abs().T).max().item()
            atol = 1e-6 * scale if dtype == torch.float32 else 1e-2 * (scale + 1)
            torch.testing.assert_close(got.double(), exact, atol=atol, rtol=1e-2)
            if dtype == torch.float32:
                reference = int8_linear_reference(x, weight, b)
                torch.testing.assert_close(got, reference, atol=1e-5 * scale, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group_size", [None, 16])
def test_a_rows_result_does_not_depend_on_the_batch(dtype, group_size):
    weight, bias, generator = _case((130, 96), dtype, group_size, seed=1)
    x = torch.randn(32, 96, generator=generator).to(dtype)
    together = kernels.int8_linear(x, weight.qweight, weight.scales, bias)
    for row in range(32):
        alone = kernels.int8_linear(
            x[row : row + 1].contiguous(), weight.qweight, weight.scales, bias
        )
        assert torch.equal(alone[0], together[row]), row
    big = torch.cat([x, torch.randn(70, 96, generator=generator).to(dtype)])  # two row tiles
    assert torch.equal(kernels.int8_linear(big, weight.qweight, weight.scales, bias)[:32], together)


@pytest.mark.parametrize("group_size", [None, 16, 32])
def test_quantization_error_is_at_most_half_a_step(group_size):
    weight = torch.randn(40, 64, generator=torch.Generator().manual_seed(2)) * 3
    weight[5] = 0  # an all-zero row stays exactly zero
    quantized = quantize_int8(weight, group_size)
    assert quantized.qweight.dtype == torch.int8 and quantized.qweight.abs().max() <= 127
    groups = 1 if group_size is None else 64 // group_size
    assert quantized.scales.shape == ((40,) if group_size is None else (40, groups))
    step = quantized.scales.view(40, groups, 1).expand(40, groups, 64 // groups).reshape(40, 64)
    error = (quantized.dequantize(torch.float32) - weight).abs()
    assert (error <= step / 2 * (1 + 1e-5)).all()
    assert torch.equal(quantized.dequantize(torch.float32)[5], torch.zeros(64))
    assert quantized.nbytes == 40 * 64 + 4 * 40 * groups


def test_bad_group_size_and_bad_method_are_refused():
    with pytest.raises(ValueError, match="group_size 24"):
        quantize_int8(torch.zeros(4, 48), 24)
    with pytest.raises(ValueError, match=r"'int4' is not one of none, int8, int8-all"):
        ModelConfig(quantization="int4")
    with pytest.raises(ValueError, match="int4"):
        LLM(quantization="int4")
    assert ModelConfig(quantization="none").quantization == "none"


def test_linear_dispatches_int8_weights_on_every_path():
    weight, bias, generator = _case((20, 32), torch.float32, None, seed=3)
    x = torch.randn(3, 32, generator=generator)
    torch.testing.assert_close(linear(x, weight, bias), int8_linear_reference(x, weight, bias))
    x64 = x.double()  # no kernel for float64: the reference path
    reference = torch.nn.functional.linear(x64, weight.dequantize(torch.float64), bias.double())
    torch.testing.assert_close(linear(x64, weight, bias.double()), reference)


def test_serve_flag_parses():
    args = build_parser("serve").parse_args(["serve", "--quantization", "int8"])
    assert engine_config_from_args(args).model.quantization == "int8"
    args = build_parser("serve").parse_args(["serve"])
    assert engine_config_from_args(args).model.quantization is None


def _dequantized_hf_model(path, *, lm_head: bool):
    """transformers' model of path with every linear replaced by its int8-dequantized weight."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and (lm_head or name != "lm_head"):
                deq = quantize_int8(module.weight.detach()).dequantize(torch.float32)
                module.weight = torch.nn.Parameter(deq)  # unties a tied head from the embeddings
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied head; tied head with qkv bias
def test_greedy_matches_transformers_on_dequantized_weights(
    family, tiny_model_factory, monkeypatch
):
    # The dequantizing kernel (exact to float32 rounding); the panel kernel, which quantizes x,
    # is held to a wider tolerance in tests/model/test_int8_panel.py.
    monkeypatch.setenv("CORRAL_PACK_INT8", "0")
    path = tiny_model_factory(family)
    llm = LLM(model=str(path), dtype="float32", num_blocks=128, block_size=16, quantization="int8")
    model = llm.engine.executor.model
    assert all(isinstance(layer.qkv, Int8Weight) for layer in model.layers)
    assert not isinstance(model.lm_head, Int8Weight)  # the head stays (docs/quantization.md)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 7, 33, 90)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    hf = _dequantized_hf_model(path, lm_head=False)
    oracle = [hf_model_greedy(hf, prompt, 10) for prompt in prompts]
    assert_greedy_matches(family, prompts, outputs, oracle)


def test_tied_head_quantization_keeps_the_embedding_table(tiny_model_factory):
    from corral.model.arch import ModelArch
    from corral.model.loader import load_model

    path = tiny_model_factory("qwen2")
    arch = ModelArch.from_dir(path)
    model = load_model(path, arch, torch.float32, torch.device("cpu"), 64)
    table = model.embed_tokens.clone()
    assert model.lm_head is model.embed_tokens
    names = ("qkv", "o", "gate_up", "down")
    layer_bytes = sum(getattr(layer, n).nbytes for layer in model.layers for n in names)
    before, after = quantize_model(model, lm_head=True)
    assert torch.equal(model.embed_tokens, table) and isinstance(model.lm_head, Int8Weight)
    assert before == layer_bytes  # the tied table stays, so it is not counted as replaced
    int8_bytes = sum(getattr(layer, n).nbytes for layer in model.layers for n in names)
    assert after == int8_bytes + model.lm_head.nbytes and int8_bytes < layer_bytes / 3
