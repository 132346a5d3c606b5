"""Random rank-r LoRA adapters in PEFT's file format for a model directory, and a copy of the
model with one adapter merged into its weights (the reference for multi-LoRA throughput)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from corral.lora.adapter import CONFIG_FILE, TARGET_MODULES, WEIGHTS_FILE, module_shapes
from corral.model.arch import ModelArch
from corral.model.loader import safetensors_files


def write_random_adapter(
    model_dir: Path, out_dir: Path, rank: int, seed: int, scale: float = 0.02
) -> Path:
    """An adapter on every linear of every layer (q/k/v/o/gate/up/down), bf16 on disk."""
    arch = ModelArch.from_dir(model_dir)
    shapes = module_shapes(arch)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(arch.num_layers):
        for module, block in TARGET_MODULES.items():
            in_features, out_features = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            a = torch.randn(rank, in_features, generator=generator) * scale
            b = torch.randn(out_features, rank, generator=generator) * scale
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    config = dict(
        peft_type="LORA",
        r=rank,
        lora_alpha=2 * rank,
        target_modules=sorted(TARGET_MODULES),
        bias="none",
        base_model_name_or_path=str(model_dir),
    )
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return out_dir


def write_merged_model(model_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """model_dir's checkpoint with W += (alpha / r) B @ A for every adapted linear."""
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    scaling = config["lora_alpha"] / config["r"]
    adapter = load_file(str(adapter_dir / WEIGHTS_FILE))
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy(path, out_dir / path.name)
    for path in safetensors_files(model_dir):
        tensors = load_file(str(path))
        for name, weight in tensors.items():
            prefix = "base_model.model." + name.removesuffix(".weight")
            a = adapter.get(prefix + ".lora_A.weight")
            if a is not None:
                b = adapter[prefix + ".lora_B.weight"]
                merged = weight.float() + scaling * (b.float() @ a.float())
                tensors[name] = merged.to(weight.dtype)
        save_file(tensors, str(out_dir / path.name), metadata={"format": "pt"})
    return out_dir
