"""PEFT adapter directories: checked against the base model, bad ones refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from corral.lora.adapter import AdapterError, inspect_adapter
from corral.lora.registry import AdapterRegistry
from corral.lora.weights import load_adapter_weights
from corral.model.arch import ModelArch
from tests.lora.adapters import ADAPTERS, build_adapter


@pytest.fixture(scope="module")
def base(tiny_model_factory):
    return tiny_model_factory("llama")


@pytest.fixture(scope="module")
def good(base, tmp_path_factory):
    return build_adapter(base, tmp_path_factory.mktemp("good"), seed=3, **ADAPTERS["all-r8"])


def _copy(good, tmp_path):
    target = tmp_path / "adapter"
    shutil.copytree(good, target)
    return target


def _edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def _edit_tensors(path, edit):
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def test_a_good_adapter_is_described_and_its_weights_scaled(base, good):
    arch = ModelArch.from_dir(base)
    ref = inspect_adapter("good", good, arch, max_lora_rank=8)
    assert ref.rank == 8 and ref.key.startswith("good@") and len(ref.content_sha256) == 64
    num_layers, num_modules = arch.num_layers, 7
    assert ref.num_params == sum(
        t.numel() for t in load_file(good / "adapter_model.safetensors").values()
    )
    weights = load_adapter_weights(ref, torch.float32)
    assert len(weights.modules) == num_layers * num_modules
    raw = load_file(good / "adapter_model.safetensors")
    b = raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    torch.testing.assert_close(weights.modules[(1, "down_proj")][1], b * (16 / 8))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda p: _edit_config(p, use_dora=True), "use_dora"),
        (lambda p: _edit_config(p, bias="all"), "bias"),
        (lambda p: _edit_config(p, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda p: _edit_config(p, peft_type="IA3"), "peft_type"),
        (lambda p: (p / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda p: (p / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (lambda p: (p / "adapter_model.safetensors").write_bytes(b"garbage"), "not a readable"),
        (
            lambda p: _edit_tensors(
                p,
                lambda t: t.update({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)}),
            ),
            "lm_head",
        ),
        (
            lambda p: _edit_tensors(
                p,
                lambda t: t.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
            ),
            "needs lora_A and lora_B",
        ),
        (
            lambda p: _edit_tensors(
                p,
                lambda t: t.update(
                    {
                        "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(
                            100, 8
                        )
                    }
                ),
            ),
            "out_features 128: the adapter was trained for another base model",
        ),
        (
            lambda p: _edit_tensors(
                p,
                lambda t: t.update(
                    {
                        "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight": torch.zeros(
                            8, 64
                        ),
                        "base_model.model.model.layers.9.mlp.up_proj.lora_B.weight": torch.zeros(
                            128, 8
                        ),
                    }
                ),
            ),
            "layer 9; the base model has 2 layers",
        ),
    ],
)
def test_bad_adapters_are_refused_naming_the_problem(base, good, tmp_path, breakage, message):
    path = _copy(good, tmp_path)
    breakage(path)
    with pytest.raises(AdapterError, match=message.replace("(", r"\(")):
        inspect_adapter("bad", path, ModelArch.from_dir(base), max_lora_rank=16)


def test_rank_limit_and_registry_names(base, good, tmp_path):
    arch = ModelArch.from_dir(base)
    with pytest.raises(AdapterError, match="rank 8, above max_lora_rank 4"):
        inspect_adapter("big", good, arch, max_lora_rank=4)
    with pytest.raises(AdapterError, match="is not a directory"):
        inspect_adapter("missing", tmp_path / "nowhere", arch, max_lora_rank=16)
    registry = AdapterRegistry(arch, max_lora_rank=16, base_model_name="base")
    first = registry.add("x", good)
    with pytest.raises(AdapterError, match="already loaded"):
        registry.add("x", good)
    with pytest.raises(AdapterError, match="base model's name"):
        registry.add("base", good)
    assert registry.resolve("x") is first and registry.resolve("x", str(good)) is first
    with pytest.raises(AdapterError, match="is loaded from"):
        registry.resolve("x", tmp_path)
    changed = _copy(good, tmp_path)
    _edit_config(changed, lora_alpha=4)
    second = registry.add("x", changed, replace=True)
    assert second.key != first.key  # new content, new identity
    registry.remove("x")
    with pytest.raises(AdapterError, match="no LoRA adapter named 'x'"):
        registry.resolve("x")
