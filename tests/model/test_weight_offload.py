"""Weight offloading (--offload-layers / --cpu-offload-gb): which layers go, the engine's greedy
output against transformers with layers offloaded, both ways of holding them (a memory-mapped
file on CPU; device slots streamed from host memory or the file, run here on the CPU), int8
and mixture-of-experts layers, and refusals."""

from __future__ import annotations

import os
import random

import pytest
import torch

from corral import LLM, SamplingParams
from corral.cli import build_parser
from corral.config import ModelConfig
from corral.engine.engine_args import engine_config_from_args
from corral.model.arch import ModelArch
from corral.model.loader import load_model
from corral.model.offload_plan import choose_offloaded_layers, plan_offloaded_layers
from corral.model.weight_offload import layer_tensor_refs, resolve_offload_target
from corral.model.weight_offload_mapped import MappedLayerOffload
from corral.model.weight_offload_streamed import StreamedLayerOffload
from tests.conftest import build_tiny_model
from tests.model.oracle import assert_greedy_matches, hf_greedy

NUM_LAYERS = 5
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory, tokenizer_dir):
    """A tiny llama with 5 layers (so offloaded layers alternate with resident ones) and biases."""
    path = tmp_path_factory.mktemp("offload-model")
    return build_tiny_model(
        path,
        tokenizer_dir,
        "qwen2",
        7,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )


def _prompts(seed: int = 3) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(n)] for n in (1, 9, 40, 130)]


def _greedy(llm: LLM, prompts, logprobs=0):
    params = SamplingParams(
        temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=logprobs
    )
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def test_layers_are_chosen_evenly_and_by_size():
    sizes = [100] * 10
    assert choose_offloaded_layers(sizes, num_layers=1) == [5]
    assert choose_offloaded_layers(sizes, num_layers=2) == [2, 7]
    assert choose_offloaded_layers(sizes, num_layers=5) == [1, 3, 5, 7, 9]
    assert choose_offloaded_layers(sizes, num_layers=10) == list(range(10))
    assert choose_offloaded_layers(sizes, num_bytes=250) == [1, 5, 8]  # the fewest reaching it
    assert choose_offloaded_layers(sizes, num_bytes=300) == [1, 5, 8]
    assert choose_offloaded_layers(sizes, num_bytes=301) == [1, 3, 6, 8]
    assert choose_offloaded_layers(sizes, num_bytes=10**6) == list(range(10))
    assert choose_offloaded_layers(sizes) == []
    with pytest.raises(ValueError, match="offload_layers 11 is more than the model's 10"):
        choose_offloaded_layers(sizes, num_layers=11)


def test_plan_sizes_layers_from_the_shape(deep_model):
    arch = ModelArch.from_dir(deep_model)
    model = load_model(deep_model, arch, torch.float32, torch.device("cpu"), 64)
    # The shape's count is the loaded tensors' bytes (float32, no alignment padding here).
    for index, layer in enumerate(model.layers):
        refs, _ = layer_tensor_refs(layer)
        assert sum(ref.nbytes for ref in refs) == arch.layer_num_params(index) * 4
    one_layer_gib = arch.layer_num_params(0) * 4 / 2**30
    assert plan_offloaded_layers(arch, 4, 0, one_layer_gib) == [2]
    assert plan_offloaded_layers(arch, 4, 0, one_layer_gib * 1.01) == [1, 3]


@pytest.mark.parametrize("num_layers", [1, 2, NUM_LAYERS])
def test_mapped_offload_matches_transformers(deep_model, tmp_path, num_layers):
    prompts = _prompts()
    oracle = [hf_greedy(deep_model, prompt, MAX_TOKENS) for prompt in prompts]
    llm = LLM(
        model=str(deep_model),
        dtype="float32",
        num_blocks=64,
        block_size=16,
        offload_layers=num_layers,
        offload_dir=str(tmp_path),
    )
    offload = llm.engine.executor.model.offload
    assert isinstance(offload, MappedLayerOffload) and len(offload.layer_ids) == num_layers
    assert os.listdir(tmp_path) == []  # the file is unlinked once mapped
    outputs = _greedy(llm, prompts)
    assert_greedy_matches("offload", prompts, outputs, oracle)
    # The offloaded layers compute with views of the file mapping, nothing else.
    mapping = offload.file.bytes
    low, high = mapping.data_ptr(), mapping.data_ptr() + mapping.numel()
    for index, layer in enumerate(llm.engine.executor.model.layers):
        refs, _ = layer_tensor_refs(layer)
        inside = [low <= getattr(r.holder, r.attribute).data_ptr() < high for r in refs]
        assert all(inside) if index in offload.layer_ids else not any(inside)
    llm.shutdown()


def _model_with(path, offload_factory):
    arch = ModelArch.from_dir(path)
    model = load_model(path, arch, torch.float32, torch.device("cpu"), 256)
    if offload_factory is not None:
        refs = {index: layer_tensor_refs(model.layers[index]) for index in (0, 2, 3)}
        model.offload = offload_factory(refs)
    return model


def _forward_logits(model, prompt: list[int]) -> torch.Tensor:
    """One prefill of prompt on a fresh 8-block cache, the last row's logits."""
    from corral.model.kv_storage import KVSpec, KVStorage
    from corral.model.subset_forward import span_metadata

    arch, block_size = model.arch, 16
    spec = KVSpec(
        arch.num_layers, block_size, arch.num_kv_heads, arch.head_dim, torch.float32, torch.float32
    )
    storage = KVStorage(spec, 8, torch.device("cpu"))
    positions = torch.arange(len(prompt))
    metadata = span_metadata(positions, torch.arange(8), block_size, None)
    hidden = model.forward(torch.tensor(prompt), positions, storage.layer_caches, metadata)
    return model.compute_logits(hidden[-1:])


@pytest.mark.parametrize("target", ["host", "disk"])
def test_streamed_slots_give_the_same_logits(deep_model, tmp_path, target):
    prompt = _prompts()[2]
    expected = _forward_logits(_model_with(deep_model, None), prompt)
    model = _model_with(
        deep_model,
        lambda refs: StreamedLayerOffload(refs, torch.device("cpu"), target, str(tmp_path)),
    )
    offload = model.offload
    assert offload.num_slot_bytes == 2 * max(size for size in offload._sizes.values())
    assert all(model.layers[i].qkv is None for i in (0, 2, 3))  # only the slots hold them
    for _ in range(3):  # the second and third passes start from the prefetched first layer
        assert torch.equal(_forward_logits(model, prompt), expected)
    # Outside a forward pass, one layer on demand (as RAG's per-layer passes take them).
    layer = model.decoder_layer(2)
    slots = [slot.data_ptr() for slot in offload._slots]
    assert any(start <= layer.qkv.data_ptr() < start + offload._slots[0].numel() for start in slots)
    offload.close()


def test_int8_layers_offload(deep_model, tmp_path):
    prompts = _prompts(5)
    kwargs = dict(model=str(deep_model), dtype="float32", num_blocks=64, quantization="int8")
    plain = [o.outputs[0].token_ids for o in _greedy(LLM(**kwargs), prompts, None)]
    llm = LLM(**kwargs, offload_layers=3, offload_dir=str(tmp_path))
    assert [o.outputs[0].token_ids for o in _greedy(llm, prompts, None)] == plain
    llm.shutdown()


def test_moe_layers_offload(tmp_path_factory, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from tests.model.test_moe_models import _build

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    path = _build("qwen2_moe-sparse-step", tmp_path_factory.mktemp("moe-offload"), tokenizer)
    prompts = _prompts(6)
    oracle = [hf_greedy(path, prompt, MAX_TOKENS) for prompt in prompts]
    llm = LLM(model=str(path), dtype="float32", num_blocks=64, offload_layers=2)
    assert llm.engine.executor.model.offload.layer_ids == [0, 2]
    assert_greedy_matches("moe-offload", prompts, _greedy(llm, prompts), oracle)
    assert llm.engine.executor.model.expert_load()  # the live counters stayed in place
    llm.shutdown()


def test_bad_offload_settings_are_refused(deep_model):
    with pytest.raises(ValueError, match="offload_layers must be >= 0, got -1"):
        ModelConfig(offload_layers=-1)
    with pytest.raises(ValueError, match="cpu_offload_gb must be >= 0 and finite, got -0.5"):
        ModelConfig(cpu_offload_gb=-0.5)
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(offload_layers=1, cpu_offload_gb=1.0)
    with pytest.raises(ValueError, match="offload_to 'gpu' is not one of"):
        ModelConfig(offload_to="gpu")
    with pytest.raises(ValueError, match="tensor_parallel_size 2 is not supported"):
        ModelConfig(offload_layers=1, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="offload to 'disk' instead"):
        resolve_offload_target("host", torch.device("cpu"))
    with pytest.raises(ValueError, match="offload_layers 6 is more than the model's 5 layers"):
        LLM(model=str(deep_model), dtype="float32", num_blocks=16, offload_layers=6)


def test_serve_flags_parse(tmp_path):
    parser = build_parser("serve")
    args = parser.parse_args(
        ["serve", "--offload-layers", "3", "--offload-to", "disk", "--offload-dir", str(tmp_path)]
    )
    model = engine_config_from_args(args).model
    assert (model.offload_layers, model.offload_to, model.offload_dir) == (3, "disk", str(tmp_path))
    args = parser.parse_args(["serve", "--cpu-offload-gb", "1.5"])
    assert engine_config_from_args(args).model.cpu_offload_gb == 1.5
