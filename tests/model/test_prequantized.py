"""Pre-quantized 4-bit checkpoints (GPTQ, AWQ) loaded as int8 group weights: a tiny random model
is quantized to 4 bits here and written in each format's packing (packed independently of the
loader, from the formats' published layouts); corral's greedy output on it must match
transformers running the dequantized weights, w = scale * (q - zero), in float32."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from corral import LLM, SamplingParams
from corral.model.arch import ModelArch, UnsupportedModelError
from corral.model.kernels import cpu_kernels
from corral.model.prequantized import convert_prequantized
from corral.model.prequantized_format import PrequantizedFormat
from corral.model.quantization import Int8Weight
from tests.conftest import build_tiny_model
from tests.model.oracle import assert_greedy_matches, hf_greedy

GROUP_SIZE = 32
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the output packed in nibble i of an AWQ word


def _quantize_4bit(weight: torch.Tensor, seed: int):
    """Asymmetric 4-bit per group of GROUP_SIZE inputs: (q [in, out], zeros and fp16 scales
    [groups, out]) and the dequantized weight [out, in] they stand for."""
    out_features, in_features = weight.shape
    groups = in_features // GROUP_SIZE
    w = weight.t().reshape(groups, GROUP_SIZE, out_features)
    low, high = w.amin(dim=1), w.amax(dim=1)
    scales = ((high - low) / 15).clamp_min(1e-6).half()
    # Zero points 1..15: GPTQ's original format stores z - 1 in 4 bits, so it cannot hold 0.
    zeros = torch.round(-low / scales.float()).clamp(1, 15).to(torch.int32)
    q = torch.round(w / scales.float().unsqueeze(1) + zeros.unsqueeze(1)).clamp(0, 15)
    q = q.to(torch.int32)
    rng = torch.Generator().manual_seed(seed)  # some zero points at the edges, 1 and 15
    edges = torch.rand(zeros.shape, generator=rng)
    zeros = torch.where(edges < 0.05, 1, torch.where(edges > 0.95, 15, zeros))
    dequantized = (q - zeros.unsqueeze(1)).float() * scales.float().unsqueeze(1)
    dequantized = dequantized.reshape(in_features, out_features).t().contiguous()
    return q.reshape(in_features, out_features), zeros, scales, dequantized


def _words(nibbles: np.ndarray) -> torch.Tensor:
    """[..., 8] values 0..15 -> int32 words, value j at bits 4j."""
    words = np.zeros(nibbles.shape[:-1], dtype=np.uint32)
    for j in range(8):
        words |= nibbles[..., j].astype(np.uint32) << np.uint32(4 * j)
    return torch.from_numpy(words.view(np.int32))


def _pack(method: str, q, zeros, scales, in_features: int) -> dict[str, torch.Tensor]:
    q, zeros = q.numpy(), zeros.numpy()
    num_out = q.shape[1]
    if method == "gptq":  # along the inputs: row 8r + j of q at bits 4j of word row r
        qweight = _words(q.reshape(-1, 8, num_out).transpose(0, 2, 1))
        qzeros = _words((zeros - 1).reshape(zeros.shape[0], -1, 8) & 0xF)  # v1 stores z - 1
        g_idx = torch.arange(in_features, dtype=torch.int32) // GROUP_SIZE
        return {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}
    order = list(AWQ_ORDER)  # along the outputs, in AWQ's nibble order
    qweight = _words(q.reshape(q.shape[0], -1, 8)[:, :, order])
    qzeros = _words(zeros.reshape(zeros.shape[0], -1, 8)[:, :, order])
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales}


QUANT_CONFIGS = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP_SIZE, "desc_act": False},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP_SIZE, "version": "gemm"},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer_dir):
    """{"oracle": dequantized float32 model, "gptq": ..., "awq": ...} directories."""
    base = build_tiny_model(
        tmp_path_factory.mktemp("prequant-base"),
        tokenizer_dir,
        "qwen2",  # q/k/v biases ride along unquantized
        11,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    tensors = load_file(base / "model.safetensors")
    oracle, packed = dict(tensors), {"gptq": {}, "awq": {}}
    for seed, name in enumerate(sorted(tensors)):
        prefix = name.removesuffix(".weight")
        if not name.endswith(".weight") or prefix.rsplit(".", 1)[-1] not in LINEARS:
            for method in packed:
                packed[method][name] = tensors[name]
            continue
        q, zeros, scales, dequantized = _quantize_4bit(tensors[name], seed)
        oracle[name] = dequantized
        for method in packed:
            for part, value in _pack(method, q, zeros, scales, tensors[name].shape[1]).items():
                packed[method][f"{prefix}.{part}"] = value
    config = json.loads((base / "config.json").read_text())
    directories = {}
    for method, state in (("oracle", oracle), *packed.items()):
        directory = tmp_path_factory.mktemp(f"prequant-{method}")
        for item in base.iterdir():
            if item.name not in ("model.safetensors", "config.json"):
                shutil.copy(item, directory / item.name)
        method_config = dict(config)
        if method != "oracle":
            method_config["quantization_config"] = QUANT_CONFIGS[method]
        (directory / "config.json").write_text(json.dumps(method_config))
        save_file(state, directory / "model.safetensors")
        directories[method] = directory
    return directories


@pytest.mark.parametrize("method", ["gptq", "awq"])
@pytest.mark.parametrize("panels", [False, True])
def test_greedy_matches_transformers_on_the_dequantized_weights(
    checkpoints, method, panels, monkeypatch
):
    """The dequantizing kernel matches to float32 rounding; the int8 panel kernel
    (tests/model/test_int8_panel.py), which quantizes x to int16, within 1e-3."""
    monkeypatch.setenv("CORRAL_PACK_INT8", "1" if panels else "0")
    rng = random.Random(4)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (1, 8, 37, 100)]
    oracle = [hf_greedy(checkpoints["oracle"], prompt, 10) for prompt in prompts]
    llm = LLM(model=str(checkpoints[method]), dtype="float32", num_blocks=64)
    layer = llm.engine.executor.model.layers[0]
    assert isinstance(layer.qkv, Int8Weight) and layer.qkv.group_size == GROUP_SIZE
    assert isinstance(layer.down, Int8Weight) and not isinstance(layer.input_norm, Int8Weight)
    kernels = cpu_kernels()
    if panels and (kernels is None or not kernels.int8_panels_supported()):
        pytest.skip("the int8 panel kernel is not built here")
    assert layer.qkv.is_packed == panels and layer.down.is_packed == panels
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert_greedy_matches(method, prompts, outputs, oracle, atol=1e-3 if panels else 1e-4)


def test_converted_weights_are_the_dequantized_ones_exactly(checkpoints):
    oracle = load_file(Path(checkpoints["oracle"]) / "model.safetensors")
    for method in ("gptq", "awq"):
        fmt = PrequantizedFormat.from_dir(checkpoints[method])
        state = load_file(Path(checkpoints[method]) / "model.safetensors")
        converted = dict(convert_prequantized(state.items(), fmt))
        for name, weight in converted.items():
            if isinstance(weight, Int8Weight):
                assert torch.equal(weight.dequantize(torch.float32), oracle[name]), (method, name)
        assert sum(isinstance(w, Int8Weight) for w in converted.values()) == 2 * len(LINEARS)


def _refusal(checkpoints, tmp_path, method: str, config_changes=None, tensor_change=None):
    directory = tmp_path / "changed"
    shutil.copytree(checkpoints[method], directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"].update(config_changes or {})
    (directory / "config.json").write_text(json.dumps(config))
    if tensor_change is not None:
        state = load_file(directory / "model.safetensors")
        tensor_change(state)
        save_file(state, directory / "model.safetensors")
    return directory


def _shuffle_g_idx(state):
    name = next(n for n in state if n.endswith("q_proj.g_idx"))
    state[name] = state[name].flip(0).contiguous()


@pytest.mark.parametrize(
    "method, config_changes, tensor_change, message",
    [
        ("gptq", {"bits": 8}, None, "bits 8: only 4-bit gptq is supported"),
        ("gptq", {"quant_method": "bitsandbytes"}, None, "'bitsandbytes' is not supported"),
        ("gptq", {"checkpoint_format": "marlin"}, None, "checkpoint_format 'marlin'"),
        ("awq", {"version": "gemv"}, None, "only AWQ's gemm packing"),
        ("gptq", {}, _shuffle_g_idx, "act-order GPTQ"),
    ],
)
def test_unsupported_checkpoints_are_refused(
    checkpoints, tmp_path, method, config_changes, tensor_change, message
):
    directory = _refusal(checkpoints, tmp_path, method, config_changes, tensor_change)
    error = UnsupportedModelError if tensor_change is None else ValueError
    with pytest.raises(error, match=message):
        if tensor_change is None:
            ModelArch.from_dir(directory)
        LLM(model=str(directory), dtype="float32", num_blocks=16)


def test_quantizing_a_quantized_checkpoint_again_is_refused(checkpoints):
    with pytest.raises(ValueError, match="quantized already"):
        LLM(model=str(checkpoints["gptq"]), dtype="float32", num_blocks=16, quantization="int8")
