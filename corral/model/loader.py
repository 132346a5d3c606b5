"""Load a Hugging Face model directory (config.json + one or sharded *.safetensors)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from corral.model.arch import ModelArch
from corral.model.models.llama import LlamaFamilyModel
from corral.model.prequantized import convert_prequantized
from corral.model.prequantized_format import PrequantizedFormat

logger = logging.getLogger(__name__)


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The checkpoint's shards, from model.safetensors.index.json or a glob."""
    directory = Path(model_dir)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{model_dir} has no *.safetensors weights (other formats are not supported)"
        )
    return files


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)


def load_model(
    model_dir: str | Path,
    arch: ModelArch,
    dtype: torch.dtype,
    device: torch.device,
    max_len: int,
    host_layer_ids: Iterable[int] = (),
) -> LlamaFamilyModel:
    """Load the checkpoint; the decoder layers in host_layer_ids load into host memory (weight
    offloading to host, corral/model/weight_offload.py), the rest onto device."""
    model = LlamaFamilyModel(arch, dtype, device, max_len)
    model.host_layer_ids = frozenset(host_layer_ids)
    files = safetensors_files(model_dir)
    named_tensors: Iterable = iter_safetensors(files)
    prequantized = PrequantizedFormat.from_dir(model_dir)
    if prequantized is not None:  # GPTQ / AWQ: packed 4-bit linears become int8 as they are
        named_tensors = convert_prequantized(named_tensors, prequantized)
    try:
        model.load_weights(named_tensors)
    except ValueError as error:
        raise ValueError(f"{model_dir}: {error}") from error
    logger.info(
        "loaded %s (%.1fM parameters, %.1fM active per token, %s) from %d file(s)",
        arch.architecture,
        arch.num_params() / 1e6,
        arch.num_active_params() / 1e6,
        str(dtype).removeprefix("torch."),
        len(files),
    )
    return model
